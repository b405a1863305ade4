"""Every job kind, run for real through ``matra-hpc submit``, on both executors.

``local`` runs without Slurm; ``slurm`` runs on the local single-node Slurm (partition debug,
profile ``localci``), which the ``slurm`` fixture starts when it is down.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import cli, manifest, read_records

from matra_hpc.launch import resolve_launch_config, wait_run
from matra_hpc.launch.smoke import ddp_smoke_model_and_batch
from matra_hpc.launch.templates import submit_program

EXECUTORS = ["local", pytest.param("slurm", marks=pytest.mark.slurm)]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        request.getfixturevalue("slurm")
    return request.param


def launch_args(executor: str) -> list[str]:
    return ["--profile", "localci"] if executor == "slurm" else []


def submit(executor: str, tmp_path: Path, *args: str, run: str = "run", wait: bool = True,
           ignore_sigint: bool = False):
    run_dir = tmp_path / run
    flags = ["--wait" if wait else "--no-wait"]
    out = cli("submit", *args, *launch_args(executor), "--run-dir", str(run_dir), *flags, cwd=tmp_path,
              ignore_sigint=ignore_sigint)
    return out, run_dir


def wait_for_state(run_dir: Path, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cli("status", str(run_dir), cwd=run_dir.parent)
        if state in out.stdout:
            return
        time.sleep(0.5)
    raise AssertionError(f"{run_dir} never reached {state}: {out.stdout}{out.stderr}")


def test_function_job_records_its_run(executor: str, tmp_path: Path) -> None:
    out, run_dir = submit(executor, tmp_path, "smoke", "--steps", "2")
    assert out.returncode == 0, out.stderr
    [record] = read_records(run_dir / "smoke", "rank*.json")
    assert (record["rank"], record["world_size"], record["steps_done"]) == (0, 1, 2)
    data = manifest(run_dir)
    assert data["command_line"].startswith("matra-hpc submit smoke --steps 2")
    assert data["config"] == {"steps": 2, "step_seconds": 0.0, "fail": False, "out": None}
    assert data["launch"]["cluster"] == executor and data["git_revision"]
    [job] = data["jobs"]
    assert job["state"] == "COMPLETED" and job["started"] and job["ended"] and job["attempts"] == 1
    assert Path(job["stdout"]).exists()
    status = cli("status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 0 and f"{job['job_id']}" in status.stdout and "COMPLETED" in status.stdout


def test_array_of_four_shards_with_two_at_once(executor: str, tmp_path: Path) -> None:
    out, run_dir = submit(
        executor, tmp_path, "smoke", "--array", "4", "--array-parallelism", "2", "--steps", "2",
        "--step-seconds", "1",
    )
    assert out.returncode == 0, out.stderr
    records = read_records(run_dir / "smoke", "rank*.json")
    assert sorted(r["rank"] for r in records) == [0, 1, 2, 3]
    assert {r["world_size"] for r in records} == {4}
    # the cap: no instant has more than two shards running
    for r in records:
        running = sum(1 for o in records if o["began"] <= r["began"] < o["finished"])
        assert running <= 2
    assert len(manifest(run_dir)["jobs"]) == 4


def test_mpi_job_ranks_exchange_data(executor: str, tmp_path: Path) -> None:
    out, run_dir = submit(executor, tmp_path, "smoke-mpi", "--ntasks-per-node", "2")
    assert out.returncode == 0, out.stderr
    records = read_records(run_dir / "smoke", "mpi-rank*.json")
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
    for r in records:
        other = 1 - r["rank"]
        assert r["received_from"] == other
        assert r["received_sum"] == pytest.approx(1000.0 * other)  # 1000 values equal to the sender's rank
        assert r["allreduce_rank_sum"] == 1
    assert records[0]["pid"] != records[1]["pid"]


def test_torchrun_ddp_step_ranks_agree(executor: str, tmp_path: Path) -> None:
    import torch

    out, run_dir = submit(executor, tmp_path, "smoke-ddp", "--ntasks-per-node", "2")
    assert out.returncode == 0, out.stderr
    records = read_records(run_dir / "smoke", "ddp-rank*.json")
    assert [(r["rank"], r["world_size"], r["backend"]) for r in records] == [(0, 2, "gloo"), (1, 2, "gloo")]
    # the expected gradient: each rank's own gradient, averaged (what DDP's allreduce computes)
    local_grads = []
    for rank in (0, 1):
        model, inputs, targets = ddp_smoke_model_and_batch(0, rank)
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        local_grads.append([p.grad.flatten() for p in model.parameters()])
    expected = [((a + b) / 2).tolist() for a, b in zip(*local_grads, strict=True)]
    for r in records:
        for got, want in zip(r["grads"], expected, strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert records[0]["local_loss"] != pytest.approx(records[1]["local_loss"])  # different data per rank


def test_failing_job_traceback_reaches_the_user(executor: str, tmp_path: Path) -> None:
    out, run_dir = submit(executor, tmp_path, "smoke", "--fail")
    assert out.returncode == 1
    assert "FAILED" in out.stdout
    assert "RuntimeError: smoke stage failed on purpose (--fail)" in out.stderr
    assert "Traceback" in out.stderr and "log:" in out.stderr
    status = cli("status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 1 and "FAILED" in status.stdout
    assert "smoke stage failed on purpose" in status.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _task_pid(run_dir: Path, timeout: float = 120) -> int:
    """The pid the job recorded when its stage started (Slurm may say RUNNING a moment before)."""
    deadline = time.monotonic() + timeout
    while not (records := read_records(run_dir / "tasks", "*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [record] = records
    return int(record["pid"])


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_cancelled_job_shows_cancelled(executor: str, sigint: str, tmp_path: Path) -> None:
    if sigint == "ignored" and executor == "slurm":
        pytest.skip("slurmd starts the job, not the submitting shell")
    # A shell that starts commands in the background (`cmd &`, some CI runners) hands them
    # SIGINT ignored; then submitit's controller never hears the cancel's SIGINT and only the
    # SIGKILL after the grace period stops the job.
    out, run_dir = submit(executor, tmp_path, "smoke", "--steps", "600", "--step-seconds", "1", wait=False,
                          ignore_sigint=sigint == "ignored")
    assert out.returncode == 0, out.stderr
    wait_for_state(run_dir, "RUNNING")
    pid = _task_pid(run_dir)
    cancel = cli("cancel", str(run_dir), "--grace", "2", cwd=tmp_path)
    assert cancel.returncode == 0 and "cancelled 1 job" in cancel.stdout
    if executor == "local":
        # cancel returns once every process of the job is gone: no waiting, no clock
        assert not _alive(pid) and not _alive(int(manifest(run_dir)["jobs"][0]["job_id"]))
        assert manifest(run_dir)["jobs"][0]["state"] == "CANCELLED"
    else:
        wait_for_state(run_dir, "CANCELLED", timeout=60)
        deadline = time.monotonic() + 120  # slurmd sends SIGKILL after KillWait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "the cancelled job kept running"
    assert "CANCELLED" in cli("status", str(run_dir), cwd=tmp_path).stdout
    assert json.loads((run_dir / "smoke" / "progress-rank0.json").read_text())["done"] < 600
    assert cli("cancel", str(run_dir), cwd=tmp_path).stdout.startswith("nothing to cancel")


def test_a_job_cancelled_before_its_stage_starts_does_not_run(tmp_path: Path, monkeypatch) -> None:
    """The window where cancel lands while the job starts, made explicit with the marker file."""
    from matra_hpc.launch.call import JobCancelled, StageCall
    from matra_hpc.launch.rundir import cancel_marker_path, create_run_dir

    run_dir = create_run_dir(tmp_path / "run")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "0")
    monkeypatch.setenv("SUBMITIT_LOCAL_NODEID", "0")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_NUM_NODES", "1")
    spec = {"stage": "smoke", "kind": "function", "run": "matra_hpc.launch.smoke:run_smoke",
            "config_cls": "matra_hpc.launch.smoke:SmokeConfig", "config": {"steps": 1, "out": str(tmp_path / "o")},
            "launch": {"gpus_per_node": 0}, "run_dir": str(run_dir), "array": None}
    cancel_marker_path(run_dir, "4242").write_text("now\n")
    with pytest.raises(JobCancelled):
        StageCall(spec)()
    assert not (tmp_path / "o").exists()  # the stage never ran
    [record] = read_records(run_dir / "tasks", "*.json")
    assert record["state"] == "CANCELLED" and record["pid"] > 0


def _resumed_part_way(starts: list[int], steps: int) -> bool:
    """First attempt from 0, a later one from saved progress, never backwards. (Under load a
    requeue may also land after the last step; that attempt starts at ``steps`` and does nothing.)"""
    return starts[0] == 0 and starts == sorted(starts) and any(0 < s < steps for s in starts[1:])


def test_time_limit_requeues_and_resumes_from_checkpoint(executor: str, tmp_path: Path) -> None:
    # 1-minute limit. Locally the checkpoint signal comes 50 s before it; slurmctld sends it
    # between 15 s and 45 s after the start (delay 15 s, checked every 30 s), so a 50-step job
    # is always interrupted once and, with up to three requeues, always finishes from its saved
    # progress. On Slurm an MPI job (whose driver is the batch shell, signalled with B:USR2) is
    # requeued alongside, every rank resuming.
    steps, seconds, delay = ("50", "1", "15") if executor == "slurm" else ("15", "1", "50")
    limits = ["--steps", steps, "--step-seconds", seconds, "--time", "1", "--signal-delay", delay]
    if executor == "slurm":
        out, mpi_dir = submit(executor, tmp_path, "smoke-mpi", "--ntasks-per-node", "2", *limits,
                              run="mpi", wait=False)
        assert out.returncode == 0, out.stdout + out.stderr
    out, run_dir = submit(executor, tmp_path, "smoke", *limits)
    assert out.returncode == 0, out.stdout + out.stderr
    [record] = read_records(run_dir / "smoke", "rank*.json")
    assert record["steps_done"] == int(steps)
    assert _resumed_part_way(record["starts"], int(steps))
    [job] = manifest(run_dir)["jobs"]
    assert job["state"] == "COMPLETED" and job["attempts"] >= 2
    if executor == "slurm":
        [mpi_job] = wait_run(mpi_dir, poll_s=1, timeout_s=240)
        assert mpi_job.state == "COMPLETED" and mpi_job.attempts >= 2
        records = read_records(mpi_dir / "smoke", "mpi-rank*.json")
        assert [r["rank"] for r in records] == [0, 1]
        for r in records:
            assert r["steps_done"] == 50 and r["received_from"] == 1 - r["rank"]
            assert _resumed_part_way(r["starts"], 50)
        assert "B:USR2@15" in next((mpi_dir / "logs").glob("*submission.sh")).read_text()


def test_dependency_starts_after_the_other_run(executor: str, tmp_path: Path) -> None:
    out, first = submit(executor, tmp_path, "smoke", "--steps", "3", "--step-seconds", "1", run="first",
                        wait=executor == "local")
    assert out.returncode == 0, out.stderr
    out, second = submit(executor, tmp_path, "smoke", "--after", str(first), run="second")
    assert out.returncode == 0, out.stderr
    [a] = read_records(first / "smoke", "rank*.json")
    [b] = read_records(second / "smoke", "rank*.json")
    assert b["began"] >= a["finished"]
    assert manifest(second)["after"] == [str(first.resolve())]


def test_external_mpi_program_from_template(executor: str, tmp_path: Path) -> None:
    launch = resolve_launch_config("localci" if executor == "slurm" else None, {"tasks_per_node": 2})
    program = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'rank {c.rank} of {c.size}', flush=True)"
    run_dir = submit_program(
        [sys.executable, "-c", program], launch, workdir=tmp_path, name="hello", run_dir=tmp_path / "prog"
    )
    [status] = wait_run(run_dir, poll_s=0.5, timeout_s=120)
    assert status.state == "COMPLETED"
    log = Path(status.stdout).read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    script = (run_dir / "job.sh").read_text()
    assert ("#SBATCH --partition=debug" in script) == (executor == "slurm")

