"""Training throughput: sequences/s and tokens/s per device for the ``tiny`` and ``paper`` models.

One optimizer step is what ``run_train`` does per rank: forward, CE + w * MSE loss,
backward, gradient clipping, Adam. Batches are random token sequences of the grammar's shape
(a ``<num>`` share of ~40%) with ``--seq-len`` tokens (26: the mean row length of the demo
store), so the figure does not depend on a data set. Each config is timed two ways in the same
run: the default path (bf16 autocast on CUDA, ``--compile`` adds torch.compile; fp32 on CPU)
and the baseline, fp32 eager. The paper trained 2.67M sequences x up to 1,000 epochs in 36 h
on 7 H100: at most ~2.9k sequences/s per GPU. Prints one JSON line per config.

    .venv/bin/python benchmarks/train.py [--configs tiny,paper] [--batch 256] [--device cuda] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from matra_hpc.model import MatraTransformer, combine_loss, load_model_config, loss_sums  # noqa: E402
from matra_hpc.tokens import load_vocab  # noqa: E402
from matra_hpc.util import git_revision  # noqa: E402

PAPER_SEQ_PER_S_PER_GPU = 2.67e6 * 1000 / (36 * 3600) / 7  # ~2,943: the upper bound of the paper's figure
REPO = Path(__file__).resolve().parents[1]


def make_batch(batch: int, seq_len: int, vocab_size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    full = torch.randint(4, vocab_size, (batch, seq_len + 1), generator=g)
    full[:, 0] = 1
    is_num = torch.rand(batch, seq_len + 1, generator=g) < 0.4
    is_num[:, 0] = False
    full[is_num] = 3
    values = torch.where(is_num, torch.rand(batch, seq_len + 1, generator=g) * 10, torch.nan)
    parts = (full[:, :-1], values[:, :-1], full[:, 1:], values[:, 1:])
    return [p.to(device) for p in parts]


def time_steps(name: str, batch: int, seq_len: int, device: torch.device, bf16: bool, compile_: bool,
               steps: int, warmup: int) -> dict:
    vocab = load_vocab()
    cfg = load_model_config(name, vocab.size)
    torch.manual_seed(0)
    model = MatraTransformer(cfg).to(device).train()
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-3)
    tokens, values, targets, target_values = make_batch(batch, seq_len, vocab.size, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, cont = forward(tokens, values)
        parts = loss_sums(logits, cont, targets, target_values, cfg)
        combine_loss(parts, parts.n_tokens, parts.n_values, cfg).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    return {"params_m": round(model.num_params() / 1e6, 2), "s_per_step": seconds,
            "seq_per_s": batch / seconds, "tok_per_s": batch * seq_len / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,paper")
    parser.add_argument("--batch", type=int, default=None,
                        help="rows per step on this device (default: 256 on CUDA, 64 tiny / 16 paper on CPU)")
    parser.add_argument("--seq-len", type=int, default=26)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the default path")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    steps = args.steps or (20 if on_gpu else 3)
    for name in args.configs.split(","):
        batch = args.batch or (256 if on_gpu else {"paper": 16}.get(name, 64))
        default = time_steps(name, batch, args.seq_len, device, bf16=on_gpu, compile_=args.compile,
                             steps=steps, warmup=3 if on_gpu else 1)
        baseline = time_steps(name, batch, args.seq_len, device, bf16=False, compile_=False,
                              steps=steps, warmup=3 if on_gpu else 1)
        print(json.dumps({
            "benchmark": "train", "model": name, "params_m": default["params_m"], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(), "batch": batch, "seq_len": args.seq_len,
            "default_path": ("bf16 autocast" if on_gpu else "fp32") + (" + compile" if args.compile else " eager"),
            "seq_per_s": round(default["seq_per_s"], 1), "tok_per_s": round(default["tok_per_s"], 1),
            "baseline_path": "fp32 eager", "baseline_seq_per_s": round(baseline["seq_per_s"], 1),
            "speedup_vs_baseline": round(default["seq_per_s"] / baseline["seq_per_s"], 2),
            "paper_seq_per_s_per_gpu": round(PAPER_SEQ_PER_S_PER_GPU),
            "fraction_of_paper": round(default["seq_per_s"] / PAPER_SEQ_PER_S_PER_GPU, 4),
            "torch": torch.__version__, "git": git_revision(), "host": platform.node(),
        }), flush=True)


if __name__ == "__main__":
    main()
