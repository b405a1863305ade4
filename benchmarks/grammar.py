"""Grammar throughput: next-token masks per second for a batch of prefixes, on one core.

The batch (default 1,024) holds prefixes of seeded random walks through the grammar, cut at
uniformly drawn depths, so every block (composition, group, sites, values, lattice) is present
in proportion to its length. Two figures:

- ``cold``: a fresh grammar with every cache (masks, reachability frontiers) emptied, so each
  distinct prefix is computed: the worst case, close to sampling, where every step meets new
  prefixes;
- ``warm``: the same call again (masks cached per prefix key): what a repeated prefix costs;
- ``lockstep``: ``batch`` fresh random walks advanced together step by step from empty caches,
  as the sampler does, timing only the ``masks`` calls: the steady state over a whole
  generation (pessimistic: uniform choices repeat prefixes far less than a trained model).

Same-run baseline: one forward step of the paper-size model (``jobs/models/paper.yaml``, random
weights: speed does not depend on training) at the same batch, one new token per row against a
KV cache of ``--cache-len`` positions, the sampler's per-token model cost. Also reported: the
brute-force reference check of the tests on a few of the same prefixes (per-prefix seconds).
Everything runs with one torch thread. Prints one JSON line.

Usage: python benchmarks/grammar.py [--batch 1024] [--cache-len 48] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from matra_hpc.util import git_revision


def walk_prefixes(grammar, n: int, rng: np.random.Generator) -> list:
    """``n`` grammar states: random walks (uniform over the mask) cut at a uniform depth."""
    num = grammar.vocab.num
    states = []
    for _ in range(n):
        state = grammar.new_states(1)[0]
        trail = []
        while not grammar.is_complete(state):
            token = int(rng.choice(np.flatnonzero(grammar.mask(state))))
            value = math.nan
            if token == num:
                lo, hi = grammar.value_range(state)
                value = float(rng.uniform(lo, hi))
                while not grammar.value_allowed(state, value):
                    value = float(rng.uniform(lo, hi))
            grammar.advance(state, token, value)
            trail.append((token, value))
        cut = int(rng.integers(0, len(trail)))  # the state before token `cut` is asked for
        states.append(trail[:cut])
    return states


def replay(grammar, trails: list) -> list:
    out = []
    for trail in trails:
        state = grammar.new_states(1)[0]
        for token, value in trail:
            grammar.advance(state, token, value)
        out.append(state)
    return out


def clear_caches(grammar) -> None:
    from matra_hpc.tokens._reachability import reach_tables

    tables = reach_tables()
    grammar._cache.clear()
    for reach in tables.groups.values():
        empty = reach._frontiers[()]
        reach._frontiers.clear()
        reach._frontiers[()] = empty
    empty = tables._flat[()]
    tables._flat.clear()
    tables._flat[()] = empty
    tables._required.clear()


def lockstep_masks(grammar, batch: int, rng: np.random.Generator) -> tuple[float, int, int]:
    """Seconds spent in ``masks`` while ``batch`` walks advance together; masks and steps."""
    num = grammar.vocab.num
    states = grammar.new_states(batch)
    spent, n_masks, steps = 0.0, 0, 0
    live = list(range(batch))
    while live:
        started = time.perf_counter()
        masks = grammar.masks([states[r] for r in live])
        spent += time.perf_counter() - started
        n_masks += len(live)
        steps += 1
        for row, r in enumerate(live):
            token = int(rng.choice(np.flatnonzero(masks[row])))
            value = math.nan
            if token == num:
                lo, hi = grammar.value_range(states[r])
                value = float(rng.uniform(lo, hi))
                while not grammar.value_allowed(states[r], value):
                    value = float(rng.uniform(lo, hi))
            grammar.advance(states[r], token, value)
        live = [r for r in live if not grammar.is_complete(states[r])]
    return spent, n_masks, steps


def model_step_seconds(vocab_size: int, batch: int, cache_len: int, repeats: int) -> tuple[float, int]:
    import torch

    from matra_hpc.model import MatraTransformer, load_model_config

    torch.manual_seed(0)
    model = MatraTransformer(load_model_config("paper", vocab_size)).eval()
    cache = model.new_kv_cache(batch, cache_len, "cpu", torch.float32)
    tokens = torch.randint(6, vocab_size, (batch, 1))
    values = torch.full((batch, 1), float("nan"))
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            cache.pos = cache_len - 1  # the last free slot: attention over a full cache
            started = time.perf_counter()
            model(tokens, values, cache)
            times.append(time.perf_counter() - started)
    return float(np.median(times[1:])), model.num_params()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--cache-len", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-prefixes", type=int, default=20)
    parser.add_argument("--no-model", action="store_true", help="skip the model forward step")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from matra_hpc.tokens.grammar import Grammar

    started = time.perf_counter()
    grammar = Grammar()
    build_s = time.perf_counter() - started
    trails = walk_prefixes(grammar, args.batch, np.random.default_rng(args.seed))

    grammar = Grammar()
    states = replay(grammar, trails)
    clear_caches(grammar)
    started = time.perf_counter()
    cold_masks = grammar.masks(states)
    cold_s = time.perf_counter() - started
    warm = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        warm_masks = grammar.masks(states)
        warm.append(time.perf_counter() - started)
    warm_s = float(np.median(warm))
    assert np.array_equal(cold_masks, warm_masks)

    grammar = Grammar()
    clear_caches(grammar)
    lock_s, lock_masks, lock_steps = lockstep_masks(grammar, args.batch, np.random.default_rng(args.seed + 1))

    # the tests' brute-force reference on a few prefixes (composition and site blocks)
    reference_s = None
    try:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "tokens"))
        from test_grammar import Reference  # the slow reference check of the tests

        ref = Reference(grammar.max_sites)
        picked = [s for s in states if s.phase in (4, 5)][: args.reference_prefixes]
        started = time.perf_counter()
        for s in picked:
            if s.phase == 4:
                for p in range(len(grammar._table[s.group])):
                    ref.site_ok(s, p, None)
            else:
                for i in range(len(s.elements)):
                    ref.site_ok(s, s.pending, i)
        reference_s = (time.perf_counter() - started) / max(len(picked), 1)
    except ImportError:
        pass

    model_s = params = None
    if not args.no_model:
        model_s, params = model_step_seconds(grammar.vocab.size, args.batch, args.cache_len, args.repeats)

    phases = np.bincount([s.phase for s in states], minlength=10).tolist()
    print(
        json.dumps(
            {
                "benchmark": "grammar",
                "batch": args.batch,
                "seed": args.seed,
                "machine": platform.machine(),
                "processor": platform.processor() or None,
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "git": git_revision(),
                "grammar_build_s": round(build_s, 3),
                "prefix_phases": phases,
                "mean_prefix_len": round(float(np.mean([len(t) for t in trails])), 1),
                "cold_batch_s": round(cold_s, 4),
                "cold_masks_per_s": round(args.batch / cold_s, 1),
                "warm_batch_s": round(warm_s, 4),
                "warm_masks_per_s": round(args.batch / warm_s, 1),
                "lockstep_steps": lock_steps,
                "lockstep_masks_per_s": round(lock_masks / lock_s, 1),
                "lockstep_mean_step_s": round(lock_s / lock_steps, 4),
                "baseline": "paper model, one KV-cached forward step at the same batch, 1 thread",
                "model_params": params,
                "model_cache_len": args.cache_len,
                "model_step_s": None if model_s is None else round(model_s, 4),
                "cold_grammar_over_model": None if model_s is None else round(cold_s / model_s, 4),
                "reference_site_check_s_per_prefix": None if reference_s is None else round(reference_s, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
