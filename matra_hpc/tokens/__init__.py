"""The invertible Wyckoff representation: crystal structure <-> canonical token sequence.

Public API (docs/contracts.md section B): :class:`Vocab`, :func:`load_vocab`,
:class:`TokenSequence`, :func:`encode`, :func:`decode`, :func:`prototype_hash`,
:class:`EncodeError` (``.reason``), :class:`DecodeError` (``.position``), :func:`wyckoff_table`.
"""

from matra_hpc.tokens.decode import decode
from matra_hpc.tokens.encode import encode
from matra_hpc.tokens.errors import REJECTION_REASONS, DecodeError, EncodeError
from matra_hpc.tokens.hashing import prototype_hash
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import Vocab, load_vocab
from matra_hpc.tokens.wyckoff import WyckoffPosition, wyckoff_table

__all__ = [
    "REJECTION_REASONS",
    "DecodeError",
    "EncodeError",
    "TokenSequence",
    "Vocab",
    "WyckoffPosition",
    "decode",
    "encode",
    "load_vocab",
    "prototype_hash",
    "wyckoff_table",
]
