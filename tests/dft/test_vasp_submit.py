"""submit vasp planning: which candidates, how packed, array sizes, the rendered script, the profile key."""

from __future__ import annotations

from pathlib import Path

import pytest

from matra_hpc.dft.submit import (
    array_chunks,
    pack_tasks,
    pick_candidates,
    render_array_script,
    run_config_from_profile,
)
from matra_hpc.errors import UsageError
from matra_hpc.launch import resolve_launch_config

GOLDEN = Path(__file__).resolve().parent / "golden"


def manifest(n: int) -> dict:
    return {"candidates": [{"id": f"r:T0.70:s0:{i}", "dir": f"b0000/r%3AT0.70%3As0%3A{i}"} for i in range(n)]}


def test_first_submission_takes_prepped_and_resubmit_failed_and_timed_out():
    states = {
        "r:T0.70:s0:0": {"status": "converged"},
        "r:T0.70:s0:1": {"status": "failed", "reason": "vasp_error"},
        "r:T0.70:s0:2": {"status": "running", "job": "7_0", "run": "runA"},  # its job hit the time limit
        "r:T0.70:s0:3": {"status": "running", "job": "8_0", "run": "runB"},  # its job still runs
        "r:T0.70:s0:4": {"status": "submitted", "job": "8_1", "run": "runB"},
        # 5: no event at all -> prepped
    }

    def ended(event: dict) -> bool:
        return event["run"] == "runA"

    first = pick_candidates(manifest(6), states, resubmit=False, job_ended=ended)
    assert [e["id"] for e in first] == ["r:T0.70:s0:5"]
    again = pick_candidates(manifest(6), states, resubmit=True, job_ended=ended)
    assert [e["id"] for e in again] == ["r:T0.70:s0:1", "r:T0.70:s0:2", "r:T0.70:s0:5"]


def test_packing_and_max_array_size():
    tasks = pack_tasks(manifest(5)["candidates"], 2)
    assert [len(t) for t in tasks] == [2, 2, 1]
    assert array_chunks(2500, 1001) == [(0, 1001), (1001, 1001), (2002, 498)]
    assert array_chunks(3, 1001) == [(0, 3)]
    # 150,000 candidates, 20 per task: 7,500 tasks in 8 arrays under Slurm's default MaxArraySize
    assert len(array_chunks(len(pack_tasks(manifest(150_000)["candidates"], 20)), 1001)) == 8
    with pytest.raises(UsageError):
        pack_tasks([], 0)


def test_array_script_golden():
    launch = resolve_launch_config(str(Path(__file__).resolve().parents[2] / "jobs" / "clusters" / "example-gpu.yaml"),
                                   {"gpus_per_node": 0, "time": "04:00:00"})
    text = render_array_script(launch.to_dict(), tasks_file="/runs/r1/vasp-tasks.json", offset=1001, count=1001,
                               log_dir="/runs/r1/logs", job_name="matra-vasp", python="python")
    text = text.replace(str(Path(__file__).resolve().parents[2]), "REPO")
    golden = GOLDEN / "vasp_array.sh"
    assert text == golden.read_text()
    assert "#SBATCH --array=0-1000%16" in text and "TASK=$(( 1001 + SLURM_ARRAY_TASK_ID ))" in text


def test_profile_key_vasp(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("vasp:\n  command: srun vasp_std\n  ncore: 4\n  kpar: 2\n")
    launch = resolve_launch_config(str(profile), {})
    config = run_config_from_profile(launch.vasp)
    assert config.vasp_command == "srun vasp_std" and launch.vasp["ncore"] == 4
    with pytest.raises(UsageError, match="vasp.command"):
        run_config_from_profile({})
    profile.write_text("vasp:\n  comand: vasp_std\n")
    with pytest.raises(UsageError, match="unknown vasp key"):
        resolve_launch_config(str(profile), {})
    profile.write_text("vasp:\n  command: vasp_std\n  ncore: 0\n")
    with pytest.raises(UsageError, match="ncore"):
        resolve_launch_config(str(profile), {})


def test_a_job_ending_mid_run_records_the_candidate_and_resubmit_takes_it(tmp_path):
    """SIGTERM (what Slurm sends at the time limit) while VASP runs: failed/job_ended, VASP stopped."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from dft_helpers import build_screened_store, fixture_structure

    from matra_hpc.context import local_context
    from matra_hpc.dft import VaspPrepConfig, read_tree_manifest, run_vasp_prep, tree_states
    from matra_hpc.dft.config import VaspRunConfig
    from matra_hpc.dft.submit import write_tasks_file

    store = build_screened_store(tmp_path / "s.zarr", [dict(structure=fixture_structure("Si.relax.vasprun.xml.gz"))])
    tree = tmp_path / "vasp"
    run_vasp_prep(VaspPrepConfig(store=str(store), out=str(tree), top=1), local_context())
    manifest = read_tree_manifest(tree)
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"default": [{"sleep": 120}]}))
    fake = Path(__file__).resolve().parent / "fake_vasp.py"
    config = VaspRunConfig(vasp_command=f"{sys.executable} {fake} {scenarios}", polling_s=0.1)
    tasks = write_tasks_file(tmp_path, tree, manifest, config, [[manifest["candidates"][0]["dir"]]])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runner = subprocess.Popen([sys.executable, "-m", "matra_hpc.dft.runner", str(tasks), "0", "--job", "77_0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tree / manifest["candidates"][0]["dir"] / ".fake_vasp" / "INCAR.0"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:  # VASP has started
        time.sleep(0.1)
    assert marker.exists()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    state = tree_states(manifest)[manifest["candidates"][0]["id"]]
    assert (state["status"], state["reason"], state["job"]) == ("failed", "job_ended", "77_0")
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", str(scenarios)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the fake VASP outlived its runner"
        time.sleep(0.1)
    picked = pick_candidates(manifest, tree_states(manifest), resubmit=True, job_ended=lambda e: True)
    assert [e["id"] for e in picked] == [manifest["candidates"][0]["id"]]


def test_no_potcar_library_is_a_reason_not_a_crash(tmp_path):
    from dft_helpers import fixture_structure

    from matra_hpc.dft.config import VaspRunConfig
    from matra_hpc.dft.inputs import write_inputs
    from matra_hpc.dft.runner import run_candidate

    write_inputs(fixture_structure("Si.relax.vasprun.xml.gz"), tmp_path / "c")
    (tmp_path / "library").mkdir()
    event = run_candidate(tmp_path / "c", VaspRunConfig(vasp_command="vasp_std", potcar_dir=str(tmp_path / "library")))
    assert (event["status"], event["reason"]) == ("failed", "no_potcar")
    assert "Si" in event["message"] and not (tmp_path / "c" / "POTCAR").exists()
