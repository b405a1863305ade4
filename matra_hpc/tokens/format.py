"""The token format version: what a store or checkpoint records about the sequences in it.

``TOKEN_FORMAT`` changes whenever a structure would encode to a different sequence or hash
(the canonical form, the block layout, the vocabulary's meaning or ``prototype_hash``), so
rows, models and hashes of two formats are never mixed. Version 2: moyopy finds the symmetry,
encode refines the input itself, one canonical cell for triclinic and monoclinic crystals,
``prototype_hash`` ``v2:``. Writers record it as the attr or metadata key ``token_format``;
readers call :func:`require_token_format`, which refuses anything else, including stores
and checkpoints written before the key existed (version 1).
"""

from __future__ import annotations

from matra_hpc.errors import MatraError, StoreError
from matra_hpc.tokens.hashing import HASH_VERSION

__all__ = ["TOKEN_FORMAT", "TokenFormatError", "require_token_format"]

TOKEN_FORMAT = HASH_VERSION  # one number for both: the hash version moves with the sequences


class TokenFormatError(StoreError):
    """A store or checkpoint holds sequences of another token format: rebuild it."""


def require_token_format(
    recorded: object, what: str, rebuild: str, error: type[MatraError] = TokenFormatError
) -> None:
    """Raise ``error`` naming ``what`` and how to ``rebuild`` it unless ``recorded`` is current."""
    if recorded == TOKEN_FORMAT:
        return
    made = "token format v1 (it records none)" if recorded is None else f"token format {recorded!r}"
    raise error(
        f"{what} was made with {made}, this matra-hpc encodes {TOKEN_FORMAT!r} (other sequences and "
        f"prototype hashes): {rebuild}"
    )
