"""Error types shared by every stage.

The CLI maps them to exit codes: ``UsageError`` -> 2 (nothing ran or was submitted),
``NotBuiltError`` -> 3, any other ``MatraError`` -> 1. Domain errors subclass
``ValueError`` as pymatgen's do, so library callers can catch them generically.
"""


class MatraError(Exception):
    """Base class of errors that the CLI reports as one line, without a traceback."""

    exit_code = 1


class UsageError(MatraError, ValueError):
    """Bad command line, profile or configuration: nothing was run or submitted."""

    exit_code = 2


class NotBuiltError(MatraError):
    """A command of a stage that does not exist yet."""

    exit_code = 3


class StoreError(MatraError, ValueError):
    """A Zarr store is missing, truncated, corrupt or written by something else."""


class CheckpointError(MatraError, ValueError):
    """A checkpoint is unreadable or does not fit the run resuming it."""
