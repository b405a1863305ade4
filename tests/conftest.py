"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Two cores in CI: keep torch/BLAS from oversubscribing when tests run processes side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def slurm_is_up() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


@pytest.fixture(scope="session")
def slurm() -> None:
    """A running local Slurm; started by scripts/slurm-up.sh when down. Never skips: fails."""
    if slurm_is_up():
        return
    out = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, text=True)
    if out.returncode != 0 or not slurm_is_up():
        pytest.fail(f"could not start the local Slurm (scripts/slurm-up.sh):\n{out.stdout}\n{out.stderr}")

_MARKERS = ("slurm", "mpi", "slow")
_outcomes: dict[str, dict[str, int]] = {m: {} for m in _MARKERS}


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest hook signature
    # Count each marked test once, by its call outcome (or setup failure/skip).
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for marker in _MARKERS:
            if marker in report.keywords:
                counts = _outcomes[marker]
                counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook signature
    # CI must show that the real Slurm, mpirun and whole-data-set tests actually ran.
    for marker in _MARKERS:
        counts = _outcomes[marker]
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none ran"
        terminalreporter.write_line(f"marker {marker}: {text}")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture, random weights, biased towards small cells of a few atoms.

    Untrained weights favour huge counts and 1 A cells, whose checks take seconds per row; the
    biases (a handful of logits and the value head) keep rows small and the tests fast while
    the model, the checkpoint format and the sampler stay the real ones.
    """
    import torch

    from matra_hpc.model import MatraTransformer, load_model_config
    from matra_hpc.model.checkpoint import save_model_dir
    from matra_hpc.tokens import load_vocab

    vocab = load_vocab()
    torch.manual_seed(0)
    config = load_model_config("tiny", vocab.size)
    model = MatraTransformer(config)
    with torch.no_grad():
        model.lm_head.bias[vocab.count(1) : vocab.count(5)] += 6.0
        model.lm_head.bias[vocab.arity(2)] += 4.0
        model.cont_head.weight.mul_(5.0)
        model.cont_head.bias.fill_(4.3)
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model_dir(path, model, {"model_config": config.to_dict(), "vocab_hash": vocab.hash, "step": 0, "epoch": 0})
    return path
