"""Resumable, checksum-verified downloads of the published data sets.

A download goes to ``NAME.part`` and continues from its size with an HTTP ``Range`` request
after an interruption; only a complete file whose checksum matches is renamed to ``NAME``.
Checksums: the publisher's md5 where published (see :mod:`matra_hpc.data.catalog`), and the
sha256 of every file recorded in ``DEST/checksums.json`` at first download, checked afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matra_hpc.data.catalog import RemoteFile, files_for
from matra_hpc.errors import MatraError
from matra_hpc.util import write_json_atomic

CHECKSUMS = "checksums.json"
_BLOCK = 1 << 20


class FetchError(MatraError):
    """A download failed or a file does not match its checksum."""


@dataclass
class FetchResult:
    name: str
    path: str
    status: str
    """``downloaded``, ``resumed`` or ``present`` (already there and verified)."""
    bytes: int
    sha256: str


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _read_sums(dest: Path) -> dict[str, Any]:
    p = dest / CHECKSUMS
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_sums(dest: Path, sums: dict[str, Any]) -> None:
    write_json_atomic(dest / CHECKSUMS, sums, indent=1, sort_keys=True)


def _verify(remote: RemoteFile, path: Path, recorded: dict[str, Any] | None) -> str:
    md5, sha = _digests(path)
    if remote.md5 and md5 != remote.md5:
        raise FetchError(f"{path.name}: md5 {md5} differs from the published {remote.md5}")
    if recorded and recorded.get("sha256") and recorded["sha256"] != sha:
        raise FetchError(f"{path.name}: sha256 {sha} differs from the one recorded at first download "
                         f"({recorded['sha256']})")
    return sha


def fetch_file(remote: RemoteFile, dest: Path | str, progress: bool = True, timeout: float = 60.0) -> FetchResult:
    """Download one file into ``dest`` (resuming a ``.part``), verify it, record its sha256."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / remote.name, dest / (remote.name + ".part")
    sums = _read_sums(dest)
    if final.exists():
        try:
            sha = _verify(remote, final, sums.get(remote.name))
        except FetchError as exc:
            raise FetchError(f"{exc}: delete {final} and fetch again") from None
        if remote.name not in sums:
            sums[remote.name] = {"sha256": sha, "md5": remote.md5, "url": remote.url, "size": final.stat().st_size}
            _write_sums(dest, sums)
        return FetchResult(remote.name, str(final), "present", final.stat().st_size, sha)

    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"User-Agent": "matra-hpc"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The server has no bytes past our part: it may be complete already, or stale.
            part.unlink()
            return fetch_file(remote, dest, progress, timeout)
        raise FetchError(f"{remote.url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{remote.url}: {getattr(exc, 'reason', exc)}; run the same fetch again to retry") from None

    with response:
        resumed = offset > 0 and response.status == 206
        if offset and not resumed:
            offset = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        from tqdm import tqdm

        received = offset
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=remote.name, disable=not progress,
        ) as bar:
            try:
                while True:
                    block = response.read(_BLOCK)
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except Exception as exc:  # any transport failure keeps the .part for a resume
                out.flush()
                raise FetchError(f"download of {remote.name} interrupted after {received} bytes "
                                 f"({type(exc).__name__}); run the same fetch again to resume") from None
    if total is not None and received < total:
        raise FetchError(f"download of {remote.name} interrupted after {received} of {total} bytes; "
                         f"run the same fetch again to resume")
    try:
        sha = _verify(remote, part, sums.get(remote.name))
    except FetchError as exc:
        part.unlink()
        raise FetchError(f"{exc}; the download was removed: fetch again (if it repeats, the mirror serves "
                         f"another file)") from None
    os.replace(part, final)
    sums[remote.name] = {"sha256": sha, "md5": remote.md5, "url": remote.url, "size": final.stat().st_size}
    _write_sums(dest, sums)
    return FetchResult(remote.name, str(final), "resumed" if resumed else "downloaded", final.stat().st_size, sha)


def fetch_dataset(dataset: str, dest: Path | str, url_base: str | None = None, only: list[str] | None = None,
                  progress: bool = True) -> list[FetchResult]:
    """``matra-hpc data fetch``: every file of ``dataset`` into ``dest``."""
    return [fetch_file(f, dest, progress=progress) for f in files_for(dataset, url_base, only)]
