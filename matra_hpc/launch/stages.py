"""What the launch layer needs to know about a stage: ``SubmittableStage``.

A stage's command module (``cli/data.py``, ``cli/train.py``, ...) lists its ``SUBMIT_STAGES``;
``matra-hpc submit NAME`` finds them through the one list of command modules
(``matra_hpc.cli.GROUP_MODULES``). The same arguments then work for the bare command (run in
this process) and for the submitted job. It lives here, below the CLI, because
``submit_stage`` takes one: the launch layer never imports ``cli``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

JobKind = Literal["function", "torchrun", "mpi"]


@dataclass(frozen=True)
class SubmittableStage:
    name: str
    """Name after ``submit``, e.g. ``train``."""
    kind: JobKind
    """How the launch layer runs it: one Python function, torchrun on every node, or MPI ranks."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the stage's own arguments (the launch options are added by ``submit``)."""
    build_config: Callable[[argparse.Namespace], Any]
    """Turns parsed arguments into the stage's config dataclass (JSON-able via asdict)."""
    config_cls: type
    run: str
    """Dotted ``module:function`` of the stage entry, called as ``fn(config, ctx)``."""
    default_launch: dict[str, Any] = field(default_factory=dict)
    """Launch settings of this stage below the profile and the flags, e.g. 2 MPI ranks."""
