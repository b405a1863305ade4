"""``prototype_hash``: the bucket key for duplicate and novelty checks (contract section 3).

Version 2 (``v2:``) hashes the same text as version 1 did, but of version-2 sequences, whose
canonical form differs (``matra_hpc.tokens.format``): hashes of the two versions must not be
compared, so the prefix changed with them. The text is the discrete content of a sequence
without its property block and without continuous values: the composition (element, count), the space group, and the multiset of
(Wyckoff letter, element) sites. It is written out as text with element symbols and group
letters, not token ids, so a vocabulary re-layout does not change it. Element and site order
do not matter (augmented sequences hash alike). For sequences that are not canonical (e.g.
sampled ones) hash ``encode(decode(seq))``, as the contract says; StructureMatcher confirms
inside a bucket.
"""

from __future__ import annotations

import hashlib

from matra_hpc.tokens.decode import parse
from matra_hpc.tokens.sequence import TokenSequence
from matra_hpc.tokens.vocab import load_vocab
from matra_hpc.tokens.wyckoff import wyckoff_table

__all__ = ["prototype_hash", "HASH_VERSION"]

HASH_VERSION = "v2"


def prototype_text(seq: TokenSequence) -> str:
    """The text that version 2 hashes, e.g. ``Cl4.Na4|225|a:Na.b:Cl`` (for tests and debugging)."""
    vocab = load_vocab()
    parsed = parse(seq, vocab)
    symbol = vocab.element_symbols
    table = wyckoff_table()[parsed.group]
    composition = ".".join(f"{symbol[z - 1]}{n}" for z, n in sorted(parsed.composition))
    sites = ".".join(
        f"{table[li].letter}:{symbol[z - 1]}" for li, z in sorted((li, z) for li, z, _, _ in parsed.sites)
    )
    return f"{composition}|{parsed.group}|{sites}"


def prototype_hash(seq: TokenSequence) -> str:
    """``'v2:<32 hex>'``: hash of the discrete, property-free content of a sequence."""
    digest = hashlib.sha256(prototype_text(seq).encode()).hexdigest()[:32]
    return f"{HASH_VERSION}:{digest}"
