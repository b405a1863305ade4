"""Launch configuration: where and how big a job is, from defaults, a cluster profile and flags.

Precedence: command-line flags > profile (``jobs/clusters/NAME.yaml`` or a path) > defaults
here. Every check happens before anything is submitted, and a problem is a one-line
``UsageError`` naming the key and, for an unknown key, the valid ones.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from matra_hpc.errors import UsageError
from matra_hpc.util import REPO_ROOT

Cluster = Literal["local", "slurm"]
MpiLauncher = Literal["mpirun", "srun"]

PROFILE_DIR = REPO_ROOT / "jobs" / "clusters"


@dataclass
class LaunchConfig:
    """Resources and environment of one submission (all jobs of a run share it)."""

    cluster: Cluster = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    """0 is valid: CPU jobs. torchrun starts this many processes per node when > 0."""
    tasks_per_node: int = 1
    """MPI ranks per node; torchrun processes per node when there are no GPUs."""
    cpus_per_task: int = 1
    mem: str | None = None
    """Slurm memory per node, e.g. ``4G``; None leaves the cluster default."""
    time: str = "01:00:00"
    """Time limit as Slurm writes it: ``MM``, ``HH:MM:SS``, ``D-HH:MM`` ..."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job (``module load ...``)."""
    activate: str | None = None
    """Shell line that activates the Python environment on the compute nodes."""
    python: str | None = None
    """Python on the compute nodes; default: the interpreter running ``matra-hpc``."""
    array_parallelism: int | None = None
    """Cap on array tasks running at once (Slurm ``%N``); None: no cap."""
    signal_delay_s: int | None = None
    """Seconds before the time limit at which the job checkpoints; default scales with time."""
    mpi_launcher: MpiLauncher = "mpirun"
    """``mpirun`` (the MPI beside the Python, works with the mpich wheel) or ``srun --mpi=pmix``."""
    max_requeues: int = 3
    extra_sbatch: dict[str, str] = field(default_factory=dict)
    """Further ``#SBATCH`` options, e.g. ``{constraint: a100}``."""
    vasp: dict[str, Any] = field(default_factory=dict)
    """How this cluster runs VASP (``submit vasp``, ``vasp-prep``): keys in ``VASP_KEYS``."""

    @property
    def time_minutes(self) -> int:
        return parse_time_minutes(self.time)

    @property
    def procs_per_node(self) -> int:
        """Processes torchrun starts on each node."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def checkpoint_signal_s(self) -> int:
        if self.signal_delay_s is not None:
            return self.signal_delay_s
        # a fixed 90 s (submitit's default) would fire before a 1-minute job even starts
        return max(15, min(120, self.time_minutes * 60 // 4))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


VALID_KEYS = [f.name for f in fields(LaunchConfig)]
# command: the VASP launch line; gamma_command: a Gamma-only build (optional); potcar_dir: the
# POTCAR library the job builds POTCARs from; ncore, kpar: VASP parallelisation (INCAR).
VASP_KEYS = ("command", "gamma_command", "potcar_dir", "ncore", "kpar")

_TIME_FORMATS = [
    re.compile(r"^(?P<m>\d+)$"),
    re.compile(r"^(?P<m>\d+):(?P<s>\d{1,2})$"),
    re.compile(r"^(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d{1,2})$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d{1,2}):(?P<m>\d{1,2})$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2})$"),
]


def parse_time_minutes(text: str | int) -> int:
    """Minutes of a Slurm time limit (rounded up, at least 1); UsageError when malformed."""
    raw = str(text).strip()
    for pattern in _TIME_FORMATS:
        match = pattern.match(raw)
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            seconds = (
                parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
            )
            if seconds <= 0:
                break
            return max(1, -(-seconds // 60))
    raise UsageError(
        f"malformed time limit {raw!r}: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
    )


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"launch setting {name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"launch setting {name} must be >= {minimum}, got {value}")
    return value


def validate(config: LaunchConfig) -> LaunchConfig:
    """Check every value; returns the config so calls can chain."""
    if config.cluster not in ("local", "slurm"):
        raise UsageError(f"cluster must be 'local' or 'slurm', got {config.cluster!r}")
    if config.mpi_launcher not in ("mpirun", "srun"):
        raise UsageError(f"mpi_launcher must be 'mpirun' or 'srun', got {config.mpi_launcher!r}")
    _check_int("nodes", config.nodes, 1)
    _check_int("gpus_per_node", config.gpus_per_node, 0)
    _check_int("tasks_per_node", config.tasks_per_node, 1)
    _check_int("cpus_per_task", config.cpus_per_task, 1)
    _check_int("max_requeues", config.max_requeues, 0)
    if config.array_parallelism is not None:
        _check_int("array_parallelism", config.array_parallelism, 1)
    if config.signal_delay_s is not None:
        _check_int("signal_delay_s", config.signal_delay_s, 1)
    parse_time_minutes(config.time)
    if config.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(config.mem), re.IGNORECASE):
        raise UsageError(f"mem must look like 4G or 4000M, got {config.mem!r}")
    for name in ("setup",):
        value = getattr(config, name)
        if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
            raise UsageError(f"launch setting {name} must be a list of shell lines")
    if not isinstance(config.extra_sbatch, dict):
        raise UsageError("launch setting extra_sbatch must be a mapping of sbatch option -> value")
    if not isinstance(config.vasp, dict):
        raise UsageError(f"launch setting vasp must be a mapping with keys {', '.join(VASP_KEYS)}")
    unknown = sorted(set(config.vasp) - set(VASP_KEYS))
    if unknown:
        raise UsageError(f"unknown vasp key(s) {', '.join(unknown)}; valid: {', '.join(VASP_KEYS)}")
    for name in ("ncore", "kpar"):
        if config.vasp.get(name) is not None:
            _check_int(f"vasp.{name}", config.vasp[name], 1)
    if config.cluster == "slurm" and not config.partition:
        raise UsageError("a slurm launch needs a partition (set it in the profile or pass --partition)")
    if config.cluster == "local" and config.nodes != 1:
        raise UsageError(f"the local executor runs on one node, got nodes={config.nodes}")
    return config


class _ProfileLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``time: 01:30:00`` as the base-60 integer 5400; profiles mean a string."""


_ProfileLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ProfileLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_ProfileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]*\.[0-9]+([eE][-+]?[0-9]+)?$"), list("-+0123456789.")
)


def find_profile(name_or_path: str) -> Path:
    """``jobs/clusters/NAME.yaml`` for a bare name, else the path itself."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise UsageError(f"profile file {name_or_path} does not exist")
        return candidate
    path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise UsageError(f"unknown profile {name_or_path!r}; known profiles: {', '.join(known) or 'none'}")
    return path


def load_profile(name_or_path: str) -> dict[str, Any]:
    """The settings of a profile as a dict, unknown keys rejected."""
    path = find_profile(name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_ProfileLoader) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"profile {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"profile {path} must be a mapping of launch settings")
    unknown = sorted(set(data) - set(VALID_KEYS))
    if unknown:
        raise UsageError(
            f"profile {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(VALID_KEYS)}"
        )
    return data


def resolve_launch_config(
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    stage_defaults: dict[str, Any] | None = None,
) -> LaunchConfig:
    """Code defaults, the stage's defaults, the profile, then non-None ``overrides`` (flags)."""
    settings: dict[str, Any] = dict(stage_defaults or {})
    if profile:
        settings.update(load_profile(profile))
    for key, value in (overrides or {}).items():
        if key not in VALID_KEYS:
            raise UsageError(f"unknown launch setting {key!r}; valid keys: {', '.join(VALID_KEYS)}")
        if value is not None:
            settings[key] = value
    if "time" in settings:
        settings["time"] = str(settings["time"])
    if settings.get("setup") is None:
        settings.pop("setup", None)
    return validate(LaunchConfig(**settings))
