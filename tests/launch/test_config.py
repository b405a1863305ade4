"""Launch settings: time limits, profiles, precedence, and bad input rejected before submitting."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import cli

from matra_hpc.errors import UsageError
from matra_hpc.launch import LaunchConfig, load_profile, parse_time_minutes, resolve_launch_config
from matra_hpc.launch.config import PROFILE_DIR


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("30", 30), ("1", 1), ("00:30", 1), ("01:00:00", 60), ("1:30:01", 91), ("2-00", 2880),
     ("1-02:03", 1563), ("0-00:10:00", 10)],
)
def test_time_limits_in_slurm_formats(text: str, minutes: int) -> None:
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["1:xx", "", "0", "-5", "1:2:3:4", "ten", "1-", "00:00:00"])
def test_malformed_time_limit_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="malformed time limit"):
        parse_time_minutes(text)


def test_every_shipped_profile_loads_and_validates() -> None:
    names = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    assert {"local", "localci", "example-gpu"} <= set(names)
    for name in names:
        config = resolve_launch_config(name)
        assert config.cluster == "slurm" and config.partition
    gpu = resolve_launch_config("example-gpu")
    assert gpu.gpus_per_node == 4 and gpu.time_minutes == 1440 and gpu.procs_per_node == 4
    assert resolve_launch_config("localci").gpus_per_node == 0


def test_precedence_flags_over_profile_over_defaults(tmp_path: Path) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text("cluster: slurm\npartition: cpu\ntime: 02:00:00\ncpus_per_task: 4\n")
    config = resolve_launch_config(str(profile), {"partition": "gpu", "nodes": None, "time": None})
    assert config.partition == "gpu"  # flag
    assert config.time_minutes == 120 and config.cpus_per_task == 4  # profile (unquoted HH:MM:SS too)
    assert config.nodes == LaunchConfig().nodes  # default


def test_unknown_profile_key_lists_valid_keys(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("partition: debug\ngpus: 4\n")
    with pytest.raises(UsageError, match=r"unknown key\(s\) gpus; valid keys: cluster, partition"):
        load_profile(str(profile))


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("cluster: slurm\n", "needs a partition"),
        ("cluster: slurm\npartition: debug\ngpus_per_node: -1\n", "gpus_per_node must be >= 0"),
        ("cluster: slurm\npartition: debug\nnodes: two\n", "nodes must be an integer"),
        ("cluster: pbs\n", "cluster must be 'local' or 'slurm'"),
        ("cluster: slurm\npartition: debug\ntime: '1:xx'\n", "malformed time limit"),
        ("cluster: slurm\npartition: debug\nmem: lots\n", "mem must look like"),
    ],
)
def test_bad_profile_values(tmp_path: Path, yaml_text: str, message: str) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml_text)
    with pytest.raises(UsageError, match=message):
        resolve_launch_config(str(profile))


def test_zero_gpus_is_valid() -> None:
    assert resolve_launch_config(None, {"gpus_per_node": 0}).gpus_per_node == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "smoke", "--profile", "{bad_key}"], "unknown key(s) gpus"),
        (["submit", "smoke", "--cluster", "slurm"], "needs a partition"),
        (["submit", "smoke", "--profile", "localci", "--time", "1:xx"], "malformed time limit"),
        (["submit", "smoke", "--profile", "no-such-profile"], "unknown profile"),
        (["status", "{not_run}"], "is not a run directory"),
        (["cancel", "{not_run}"], "is not a run directory"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_submits_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("cluster: slurm\npartition: debug\ngpus: 1\n")
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    args = [a.format(bad_key=bad_key, not_run=not_run) for a in args]
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matra-hpc: error:") and message in lines[0]
    assert not (tmp_path / "runs").exists()  # no run directory, so nothing was submitted


def test_stage_defaults_sit_below_profile_and_flags(tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("cluster: slurm\npartition: debug\ntasks_per_node: 4\n")
    assert resolve_launch_config(None, {}, {"tasks_per_node": 2}).tasks_per_node == 2
    assert resolve_launch_config(str(profile), {}, {"tasks_per_node": 2}).tasks_per_node == 4
    assert resolve_launch_config(str(profile), {"tasks_per_node": 3}, {"tasks_per_node": 2}).tasks_per_node == 3


def test_mpi_stages_default_to_two_ranks_and_one_rank_per_gpu() -> None:
    from matra_hpc.cli.jobs import submittable_stages
    from matra_hpc.launch.call import launcher_command

    stages = {s.name: s for s in submittable_stages()}
    for name in ("generate", "data-prepare"):
        launch = resolve_launch_config(None, {}, stages[name].default_launch)
        spec = {"kind": "mpi", "launch": launch.to_dict(), "run_dir": "/tmp/x"}
        command = launcher_command(spec, Path("/tmp/x"))
        assert command[1:3] == ["-n", "2"]
    gpu = resolve_launch_config("example-gpu").to_dict()
    command = launcher_command({"kind": "mpi", "launch": gpu, "run_dir": "/tmp/x"}, Path("/tmp/x"))
    assert command[1:3] == ["-n", str(gpu["nodes"] * gpu["gpus_per_node"])]
