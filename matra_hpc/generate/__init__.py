"""The generate stage: temperatures x shards of sampled crystals into the generated store.

``run_generate(GenerateConfig, RunContext)`` samples, checks (decodes, bonds, space group,
prototype hash, training duplicates) and writes shards atomically; ``consolidate`` marks run
duplicates; ``build_report``/``write_report`` give the per-temperature table of paper Fig. 2.
Heavy modules (torch, pymatgen) load on first use, so importing the config stays cheap.
"""

from matra_hpc.generate.config import GenerateConfig, task_seed
from matra_hpc.generate.temperatures import parse_temperatures, temperature_group

__all__ = ["GenerateConfig", "parse_temperatures", "task_seed", "temperature_group"]
