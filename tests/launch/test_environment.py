"""The context each process gets, and rebuilding a stage config from its JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pytest

from matra_hpc.launch import context_from_environment
from matra_hpc.launch.call import config_from_dict
from matra_hpc.launch.environment import rendezvous_port

_LAUNCHER_VARS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "PMI_RANK",
                  "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plain_process_is_rank_0_of_1(clean_env: pytest.MonkeyPatch) -> None:
    ctx = context_from_environment(run_dir="/r")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, ctx.comm, ctx.run_dir) == (0, 1, 0, "cpu", None, "/r")


def test_torchrun_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TORCHELASTIC_RUN_ID", "7")
    clean_env.setenv("RANK", "5")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    ctx = context_from_environment(gpus_per_node=4)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device) == (5, 8, 1, "cuda:1")


def test_array_shard_is_rank_of_shard_count(clean_env: pytest.MonkeyPatch) -> None:
    ctx = context_from_environment(shard=(3, 4))
    assert (ctx.rank, ctx.world_size, ctx.comm) == (3, 4, None)


def test_rendezvous_port_differs_per_job() -> None:
    assert rendezvous_port("101") != rendezvous_port("102")
    assert rendezvous_port(None) == 29500


@dataclass
class _Inner:
    temperatures: tuple[float, ...] = (1.0,)


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    maybe: _Inner | None = None
    shards: int = 1


def test_config_round_trips_through_json_form() -> None:
    config = _Outer(name="run", inner=_Inner(temperatures=(0.5, 0.7)), maybe=_Inner((1.2,)), shards=3)
    import json

    rebuilt = config_from_dict(_Outer, json.loads(json.dumps(asdict(config))))
    assert rebuilt == config
