"""`matra-hpc demo`: every stage end to end on the shipped data, with the local executor.

The demo is the sequence of commands a user would type, run one after the other in this
process, so what it exercises is exactly the documented path (CLI -> launch layer -> stage).
Each stage resumes from its own output, so rerunning the demo skips finished work: the token
store is reused, training stops at the same step budget, finished generation shards are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from matra_hpc.errors import MatraError
from matra_hpc.generate.config import DEFAULT_TEMPS

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "demo-out"
    model: str = "tiny"
    train_steps: int = 1200
    """Optimizer steps, the length of the one-cycle schedule too: a fixed amount of training, so
    the demo's figures do not depend on how loaded the machine is (about 3 minutes on 2 idle
    cores). A rerun continues a cut run, never trains a finished one."""
    train_batch: int = 64
    """Rows per optimizer step: small batches, many steps (docs/generation-quality.md)."""
    train_epochs: int = 1000
    """Upper bound only: the step budget ends the demo's training."""
    train_lr_max: float = 3e-3
    """Peak learning rate: the paper's 2e-4 is for the 41M model over many hours."""
    train_minutes: float | None = None
    """Optional cap on training time (a safety net on a slow machine, off by default)."""
    train_procs: int = 2
    """torchrun processes (DDP over gloo on the CPU)."""
    temps: str = DEFAULT_TEMPS
    per_temp: int = 64
    shards: int = 2
    ranks: int = 2
    """mpirun ranks pulling (temperature, shard) tasks."""
    batch_size: int = 32
    screen_max_temperature: float = 1.0
    """Screen the generated temperatures up to this one (the paper's useful range)."""
    screen_limit: int = 64
    """Relax at most this many candidates (the first screenable ones, in T then row order): the
    embedded 7net-0 costs about 7 ms per atom and FIRE step on one CPU core, so the demo screens
    a sample in minutes; ``--screen-limit`` takes more."""
    screen_relax: str = "sevennet:0.1:40"
    """Protocol of the demo: the embedded 7net-0, one step to the paper's first-step fmax (0.1 eV/A,
    M3GNet's there), capped so it fits minutes on 2 cores (at 0.05, a third hit a cap of 60)."""
    screen_max_atoms: int = 8
    """Relax candidates of at most this many sites (primitive cell); the limit counts only these."""
    screen_threads: int = 1
    """CPU threads of the potential. One: on a loaded 2-core machine two torch threads waited on
    each other and a batched call cost 3-10x the CPU per atom (benchmarks/screen.py)."""
    hold_out_system: str | None = "Cd-I"
    """Kept out of the demo's training and searched for by ``eval recovery``: Cd-I has the most
    structures of the demo set's small systems (15 CdI2 polytypes; 9 pass the training filters)."""
    baseline_n: int = 64
    """PyXtal baseline structures, drawn in the chemical systems of the generated run."""
    baseline_max_atoms: int = 8
    """Small cells, so relaxing the baseline stays within minutes on 2 cores."""
    baseline_screen_limit: int = 32
    """Baseline structures relaxed (the first ones): enough for a rough Fig. 4 curve in minutes."""
    recovery_n: int = 256
    """Rows sampled conditioned on the held-out system."""
    recovery_temperature: float = 1.0


def demo_commands(config: DemoConfig) -> list[list[str]]:
    """The commands the demo runs, in order (argument lists for ``matra-hpc``)."""
    out = Path(config.out)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tokens = str(out / "tokens.zarr")
    train_out = str(out / "train")
    gen = str(out / "generated.zarr")
    screen = screen_commands(config, tokens, gen)
    return [
        ["data", "demo", "--out", tokens,
         *(["--hold-out-system", config.hold_out_system] if config.hold_out_system else [])],
        [
            "submit", "train", "--cluster", "local", "--ntasks-per-node", str(config.train_procs),
            "--run-dir", str(out / "runs" / f"{stamp}-train"),
            "--model", config.model, "--data", tokens, "--out", train_out,
            "--epochs", str(config.train_epochs), "--lr-max", str(config.train_lr_max),
            "--global-batch", str(config.train_batch),
            "--max-steps", str(config.train_steps), "--schedule-steps", str(config.train_steps),
            *(["--max-minutes", str(config.train_minutes)] if config.train_minutes else []),
        ],
        [
            "submit", "generate", "--cluster", "local", "--ntasks-per-node", str(config.ranks),
            "--run-dir", str(out / "runs" / f"{stamp}-generate"),
            "--checkpoint", train_out, "--temps", config.temps, "--per-temp", str(config.per_temp),
            "--shards", str(config.shards), "--batch-size", str(config.batch_size),
            "--train-store", tokens, "--out", gen,
            # a fixed run id: a rerun resumes the same store instead of starting another run
            "--run-id", "demo",
        ],
        ["report", "generate", gen],
        *screen,
        *evaluate_commands(config, tokens, train_out, gen, screened=bool(screen)),
    ]


def screen_commands(config: DemoConfig, tokens: str, gen: str) -> list[list[str]]:
    """Index the training data, screen the T <= 1.0 candidates against it, print Table 1."""
    from matra_hpc.generate.temperatures import parse_temperatures

    temps = [t for t in parse_temperatures(config.temps) if t <= config.screen_max_temperature]
    if not temps:
        return []
    out = Path(config.out)
    index, screened = str(out / "ref.index"), str(out / "screened.zarr")
    return [
        ["index", "build", tokens, "--out", index],
        ["screen", gen, "--out", screened, "--temps", ",".join(f"{t:.2f}" for t in temps),
         "--limit", str(config.screen_limit), "--relax", config.screen_relax,
         *screen_options(config, tokens)],
        ["report", "screen", screened],
    ]


def screen_options(config: DemoConfig, tokens: str) -> list[str]:
    """What the run's and the baseline's screenings share: hull, index, reference cache, threads."""
    out = Path(config.out)
    return ["--hull-reference", tokens, "--novelty-index", str(out / "ref.index"),
            "--reference-cache", str(out / "references"), "--max-atoms", str(config.screen_max_atoms),
            "--threads", str(config.screen_threads)]


def evaluate_commands(config: DemoConfig, tokens: str, train_out: str, gen: str,
                      screened: bool = True) -> list[list[str]]:
    """The PyXtal baseline screened like the run, recovery of the held-out system, the HTML report.

    ``screened``: the demo screened its run (some temperature <= 1.0); else the baseline is only
    generated and the page compares validity and SMACT.
    """
    out = Path(config.out)
    base, base_screened = out / "baseline.zarr", out / "baseline-screened.zarr"
    recovery = out / "recovery"
    commands = [
        ["baseline", "pyxtal", "--n", str(config.baseline_n), "--out", str(base), "--systems-from", gen,
         "--max-atoms", str(config.baseline_max_atoms), "--train-store", tokens, "--run-id", "demo-pyxtal"],
    ]
    if screened:
        commands.append(["screen", str(base), "--out", str(base_screened), "--relax", config.screen_relax,
                         "--limit", str(config.baseline_screen_limit), *screen_options(config, tokens)])
    if config.hold_out_system:
        commands.append(["eval", "recovery", "--system", config.hold_out_system, "--held-out", tokens,
                         "--checkpoint", train_out, "--n", str(config.recovery_n),
                         "--temps", f"{config.recovery_temperature:.2f}", "--batch-size", str(config.batch_size),
                         "--out", str(recovery)])
    report = ["report", "all", "--generated", gen, "--checkpoint", train_out, "--out", str(out / "report"),
              *(["--screened", str(out / "screened.zarr"), "--baseline", str(base_screened)] if screened
                else ["--baseline", str(base)])]
    if config.hold_out_system:
        report += ["--recovery", str(recovery / "recovery.json")]
    return [*commands, report]


def run_demo(config: DemoConfig) -> dict[str, object]:
    """Run the demo commands; stop at the first that fails. Returns what each step took."""
    from matra_hpc.cli import main

    Path(config.out).mkdir(parents=True, exist_ok=True)
    steps = []
    for argv in demo_commands(config):
        line = "matra-hpc " + shlex.join(argv)
        print(f"\n==> {line}", flush=True)
        start = time.perf_counter()
        code = main(argv)
        seconds = round(time.perf_counter() - start, 1)
        steps.append({"command": line, "exit_code": code, "seconds": seconds})
        if code != 0:
            raise MatraError(f"demo step failed (exit {code}): {line}")
    return {"out": str(Path(config.out).resolve()), "steps": steps}


def cmd_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out=args.out, train_steps=args.train_steps, train_minutes=args.train_minutes, per_temp=args.per_temp,
        temps=args.temps, screen_limit=args.screen_limit, baseline_screen_limit=args.baseline_screen_limit,
    )
    print(json.dumps(run_demo(config)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    parser = sub.add_parser(
        "demo",
        help="run the README demo end to end on the local executor",
        description="Tokenize the shipped MP structures, train the tiny model, sample a "
        "temperature sweep with mpirun, screen the T <= 1.0 candidates with the embedded SevenNet "
        "against the training data and write the reports. Rerun to resume.",
    )
    parser.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    parser.add_argument("--train-steps", type=int, default=d.train_steps,
                        help="optimizer steps of the tiny model (default %(default)s)")
    parser.add_argument("--train-minutes", type=float, default=d.train_minutes,
                        help="optional cap on training time (default: none, the steps decide)")
    parser.add_argument("--per-temp", type=int, default=d.per_temp, help="structures per temperature")
    parser.add_argument("--temps", default=d.temps, help="temperature sweep start:stop:step or a list")
    parser.add_argument("--screen-limit", type=int, default=d.screen_limit,
                        help="candidates of T <= 1.0 to relax (default %(default)s)")
    parser.add_argument("--baseline-screen-limit", type=int, default=d.baseline_screen_limit,
                        help="PyXtal baseline structures to relax (default %(default)s)")
    parser.set_defaults(func=cmd_demo)
