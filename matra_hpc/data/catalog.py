"""Where the published data sets live: the one place that names download URLs.

matbench-discovery publishes md5 sums of its figshare files (its ``data-files.yml``); they are
checked after every download. Alexandria publishes none: the sha256 of the first download is
recorded in ``DEST/checksums.json`` and later downloads must match it. Every URL can be
replaced with ``--url-base`` (a mirror holding the same file names), which keeps the checks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    name: str
    """Local file name (also the name under a ``--url-base`` mirror)."""
    url: str
    md5: str | None
    """Publisher's checksum, when one is published."""
    description: str = ""


_FIGSHARE = "https://figshare.com/files/"
ALEXANDRIA_RELEASE = "2024.12.15"
ALEXANDRIA_BASE = f"https://alexandria.icams.rub.de/data/pbe/{ALEXANDRIA_RELEASE}/"
ALEXANDRIA_N_FILES = 50

CATALOG: dict[str, tuple[RemoteFile, ...]] = {
    "mp": (
        RemoteFile("2023-02-07-mp-computed-structure-entries.json.gz", _FIGSHARE + "40344436",
                   "76fc748db6b175bb80de4c276d27c235",
                   "Materials Project ComputedStructureEntries (relaxed structures, energies), 2023-02-07"),
        RemoteFile("2025-02-01-mp-energies.csv.gz", _FIGSHARE + "52080797", "7eb0c49fc169ba92783f2f6d0d19d741",
                   "Materials Project formation energies and energies above hull (eV/atom)"),
    ),
    "wbm": (
        RemoteFile("2022-10-19-wbm-computed-structure-entries.jsonl.gz", _FIGSHARE + "53161832",
                   "655b7a9c368e136dd8747f1ef8002e7a", "WBM relaxed ComputedStructureEntries"),
        RemoteFile("2023-12-13-wbm-summary.csv.gz", _FIGSHARE + "64706751", "1555268d3aa59d20262cb9d01ce0994b",
                   "WBM summary: MP2020-corrected formation energies and hull distances"),
    ),
    "alexandria": tuple(
        RemoteFile(f"alexandria_{i:03d}.json.bz2", f"{ALEXANDRIA_BASE}alexandria_{i:03d}.json.bz2", None,
                   f"Alexandria PBE 3D entries, part {i} of release {ALEXANDRIA_RELEASE}")
        for i in range(ALEXANDRIA_N_FILES)
    ),
}


def files_for(dataset: str, url_base: str | None = None, only: list[str] | None = None) -> list[RemoteFile]:
    """The files of a data set, optionally from a mirror and restricted to some names."""
    from matra_hpc.errors import UsageError

    if dataset not in CATALOG:
        raise UsageError(f"unknown data set {dataset!r}; valid: {', '.join(CATALOG)}")
    files = list(CATALOG[dataset])
    if only:
        known = {f.name for f in files}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UsageError(f"{dataset} has no file {unknown[0]!r}; valid: {', '.join(sorted(known))}")
        files = [f for f in files if f.name in only]
    if url_base:
        base = url_base.rstrip("/") + "/"
        files = [RemoteFile(f.name, base + f.name, f.md5, f.description) for f in files]
    return files
