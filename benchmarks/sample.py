"""Sampling throughput: structures per second with refill against cohorts, and with the KV cache
against recomputing the prefix.

For each model config (``tiny``, ``paper``; random weights unless ``--trained``, below) and
batch size, ``--batches`` x ``batch`` sequences are sampled at T = 1 with the grammar mask and
the KV cache, timed end to end (grammar and sampling included), twice in the same run:

- ``refill``: a finished sequence's slot takes the next sequence (the default sampler);
- ``cohort``: ``SamplerSettings(refill=False)``, cohorts of ``batch`` whose finished rows are
  dropped and not replaced (the previous sampler).

Both report the mean batch occupancy (fraction of the slots holding a running sequence per
forward step) and structures/s; the two must give the same sequences (``same_tokens``). An
untimed pass over the same sequences runs first, so both timed runs find the grammar's caches
warm.

With ``--nocache-baseline`` the cohort run is also compared with the sampler without the cache,
where every step re-runs the model over the whole prefix:

- ``measured``: the no-cache sampler is run in full (same seed, same sequences) when its
  estimate is below ``--max-baseline-s``;
- ``scaled``: otherwise the no-cache forward is timed at a few of the run's (rows, prefix
  length) points, with at most ``--probe-rows`` rows, scaled linearly in rows and interpolated
  over the steps; the run's own non-model time is added back.

One JSON line per (config, batch), with the machine, torch threads and git revision. The
``--baseline-config`` (default ``tiny-paper``: the tiny size with the paper's value head) runs
first; every other config's line also carries its figures and the ratios (structures/s and
tokens/s, refill): the cost of the typed slots, mixture head and repulsion, same run.
``--trained CONFIG=CHECKPOINT`` (repeatable) samples that config with trained weights instead of
random ones: random weights draw crystals of hundreds of atoms (a step's repulsion then reads
thousands of earlier atoms), trained ones draw the crystals a run really samples. Compare trained
with trained: both configs trained on the same store for the same steps.
``--repeats N`` times each mode N times and reports the fastest (best of N, as ``timeit`` does),
the configs' runs taking turns. Lines come per batch size, the baseline config's first.
Usage: python benchmarks/sample.py [--configs tiny,paper] [--batch-sizes 32,128,256] [--batches 3] [--repeats 1]
       [--device cuda] [--nocache-baseline] [--baseline-config tiny-paper]
       [--trained tiny=demo-out/train --trained tiny-paper=runs/tiny-paper]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from matra_hpc.model import MatraTransformer, load_model, load_model_config
from matra_hpc.sample.sampler import SamplerSettings, SamplingStats, sample_sequences
from matra_hpc.tokens import load_vocab
from matra_hpc.tokens.grammar import Grammar
from matra_hpc.util import git_revision


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_sampler(model, grammar, n, device, use_cache, seed=0, record=False, batch=None, refill=True):
    stats = SamplingStats(record_steps=record)
    sync(device)
    started = time.perf_counter()
    settings = SamplerSettings(batch_size=batch or n, use_cache=use_cache, refill=refill)
    seqs = sample_sequences(model, grammar, n, 1.0, torch.Generator().manual_seed(seed), settings, device=device,
                            stats=stats)
    sync(device)
    return seqs, stats, time.perf_counter() - started


@torch.no_grad()
def nocache_forward_seconds(model, rows: int, length: int, device: str, vocab_size: int) -> float:
    tokens = torch.randint(4, vocab_size, (rows, length), device=device)
    values = torch.full((rows, length), float("nan"), device=device)
    sync(device)
    started = time.perf_counter()
    model(tokens, values)
    sync(device)
    return time.perf_counter() - started


def scaled_baseline(model, stats: SamplingStats, device: str, vocab_size: int, probe_rows: int,
                    n_probes: int) -> float:
    """Estimated forward time of the no-cache sampler over the run's steps."""
    lengths = np.array([p for _, p, _ in stats.steps])
    rows = np.array([r for r, _, _ in stats.steps])
    # prefix lengths restart with every cohort: probe evenly over their range
    probe_lengths = np.unique(np.linspace(lengths.min(), lengths.max(), n_probes).round().astype(int))
    r = int(min(probe_rows, rows.max()))
    nocache_forward_seconds(model, r, 4, device, vocab_size)  # warm-up
    per_row = [nocache_forward_seconds(model, r, int(length), device, vocab_size) / r for length in probe_lengths]
    per_row_at = np.interp(lengths, probe_lengths, per_row)
    return float((per_row_at * rows).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,paper")
    parser.add_argument("--batch-sizes", default="32,128,256")
    parser.add_argument("--batches", type=int, default=3, help="sequences per run: this many batches")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per mode; the fastest is reported")
    parser.add_argument("--nocache-baseline", action="store_true", help="also time the sampler without the cache")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-baseline-s", type=float, default=60.0)
    parser.add_argument("--probe-rows", type=int, default=16)
    parser.add_argument("--probes", type=int, default=6)
    parser.add_argument("--baseline-config", default="tiny-paper",
                        help="same-run baseline of the other configs (the paper's value head); '' for none")
    parser.add_argument("--trained", action="append", default=[], metavar="CONFIG=CHECKPOINT",
                        help="sample CONFIG with the weights of CHECKPOINT (a training output or checkpoint folder)")
    args = parser.parse_args()
    trained = dict(item.split("=", 1) for item in args.trained)
    vocab = load_vocab()
    grammar = Grammar()
    names = args.configs.split(",")
    if args.baseline_config and args.baseline_config not in names:
        names.insert(0, args.baseline_config)
    elif args.baseline_config:  # first, so the others can be compared with it
        names.insert(0, names.pop(names.index(args.baseline_config)))
    models = {}
    for name in names:
        torch.manual_seed(0)
        if name in trained:
            model, _ = load_model(trained[name], args.device)
            models[name] = model.eval()
        else:
            models[name] = MatraTransformer(load_model_config(name, vocab.size)).to(args.device).eval()
        run_sampler(models[name], grammar, 8, args.device, True, seed=99)  # warm-up (and grammar caches)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        n = args.batches * batch
        for model in models.values():
            # Untimed pass over the same sequences: the grammar's mask caches fill on first sight
            # of a prefix, which would otherwise favour whichever mode runs second.
            run_sampler(model, grammar, n, args.device, True, batch=batch)
        # Best of --repeats timings (same seed, same sequences: a busy moment of the machine slows
        # a run, never speeds one up), the configs' runs interleaved so that a slow stretch of
        # the machine falls on all of them alike.
        refill: dict[str, tuple] = {}
        cohort: dict[str, tuple] = {}
        for _ in range(args.repeats):
            for name, model in models.items():
                run = run_sampler(model, grammar, n, args.device, True, batch=batch)
                if name not in refill or run[2] < refill[name][2]:
                    refill[name] = run
                run = run_sampler(model, grammar, n, args.device, True, record=True, batch=batch, refill=False)
                if name not in cohort or run[2] < cohort[name][2]:
                    cohort[name] = run
        base = None
        for name, model in models.items():
            seqs, stats, refill_s = refill[name]
            cohort_seqs, cohort_stats, cached_s = cohort[name]
            row = {
                "benchmark": "sample", "config": name, "weights": trained.get(name, "random"),
                "params": model.num_params(), "batch": batch,
                "structures": n, "repeats": args.repeats, "device": args.device, "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(), "cpus": os.cpu_count(), "git": git_revision(),
                "complete": sum(s.complete for s in seqs),
                "mean_tokens": round(float(np.mean([len(s.tokens) for s in seqs])), 1),
                "refill_s": round(refill_s, 3), "refill_structures_per_s": round(n / refill_s, 2),
                "refill_occupancy": round(stats.mean_occupancy, 3), "refill_steps": stats.forward_calls,
                "cohort_s": round(cached_s, 3), "cohort_structures_per_s": round(n / cached_s, 2),
                "cohort_occupancy": round(cohort_stats.mean_occupancy, 3), "cohort_steps": cohort_stats.forward_calls,
                "refill_speedup": round(cached_s / refill_s, 2),
                "same_tokens": [a.tokens for a in seqs] == [b.tokens for b in cohort_seqs],
                # random weights sample sequences of different lengths per config: tokens/s too
                "refill_tokens_per_s": round(sum(len(q.tokens) for q in seqs) / refill_s, 1),
            }
            if name == args.baseline_config:
                base = row
            elif base is not None:
                row.update({
                    "baseline_config": args.baseline_config,
                    "baseline_refill_structures_per_s": base["refill_structures_per_s"],
                    "baseline_refill_tokens_per_s": base["refill_tokens_per_s"],
                    "structures_vs_baseline": round(row["refill_structures_per_s"] / base["refill_structures_per_s"], 3),
                    "tokens_vs_baseline": round(row["refill_tokens_per_s"] / base["refill_tokens_per_s"], 3),
                })
            if args.nocache_baseline:
                forward_cached = sum(s for _, _, s in cohort_stats.steps)
                other_s = cached_s - forward_cached
                estimate = other_s + scaled_baseline(model, cohort_stats, args.device, vocab.size, args.probe_rows,
                                                     args.probes)
                if estimate <= args.max_baseline_s:
                    base_seqs, _, baseline_s = run_sampler(model, grammar, n, args.device, False, batch=batch)
                    same = [a.tokens for a in base_seqs] == [b.tokens for b in cohort_seqs]
                    mode = "measured"
                else:
                    baseline_s, same, mode = estimate, None, "scaled"
                row.update({
                    "kv_forward_s": round(forward_cached, 3), "non_model_s": round(other_s, 3),
                    "baseline_mode": mode, "baseline_s": round(baseline_s, 3),
                    "baseline_estimate_s": round(estimate, 3),
                    "baseline_structures_per_s": round(n / baseline_s, 3),
                    "kv_speedup": round(baseline_s / cached_s, 2), "baseline_same_tokens": same,
                })
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
