"""The invertible Wyckoff representation: crystal structure <-> canonical token sequence.

Public API (docs/contracts.md section B): :class:`Vocab`, :func:`load_vocab`,
:class:`TokenSequence`, :func:`wyckoff_table`, and (added with the encoder) ``encode``,
``decode``, ``prototype_hash``, ``EncodeError``, ``DecodeError``.
"""

from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import Vocab, load_vocab
from matra_hpc.tokens.wyckoff import WyckoffPosition, wyckoff_table

__all__ = ["TokenSequence", "Vocab", "WyckoffPosition", "load_vocab", "wyckoff_table"]
