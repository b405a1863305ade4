"""`data fetch` against a loopback HTTP server (a thread on 127.0.0.1): resume, checksums."""

from __future__ import annotations

import bz2
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from matra_hpc.cli import main
from matra_hpc.data.catalog import RemoteFile, files_for
from matra_hpc.data.fetch import FetchError, fetch_file


class _Server:
    """Serves ``files`` with Range support; names in ``cut`` drop the connection half way once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                body = outer.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if name in outer.cut:
                    outer.cut.discard(name)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _alexandria_bytes(n_entries: int = 300) -> bytes:
    # Big enough (hundreds of kB) that a half transfer is a real partial file.
    entries = [{"@module": "pymatgen.entries.computed_entries", "@class": "ComputedStructureEntry",
                "energy": -float(i), "data": {"mat_id": f"agm{i:09d}", "e_above_hull": 0.01 * i},
                "structure": {"lattice": {"matrix": [[4.0 + i * 1e-3, 0, 0], [0, 4, 0], [0, 0, 4]]},
                              "sites": [{"species": [{"element": "Na", "occu": 1}], "abc": [0, 0, 0]}]}}
               for i in range(n_entries)]
    return bz2.compress(json.dumps({"entries": entries}).encode(), compresslevel=1) + bytes(range(256)) * 400


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    body = _alexandria_bytes()
    with _Server({"alexandria_000.json.bz2": body}) as server:
        server.cut.add("alexandria_000.json.bz2")
        remote = RemoteFile("alexandria_000.json.bz2", f"{server.url}/alexandria_000.json.bz2", None)
        with pytest.raises(FetchError, match="run the same fetch again to resume"):
            fetch_file(remote, tmp_path, progress=False)
        part = tmp_path / "alexandria_000.json.bz2.part"
        assert 0 < part.stat().st_size < len(body)
        half = part.stat().st_size
        result = fetch_file(remote, tmp_path, progress=False)
        assert result.status == "resumed"
        assert server.requests[-1] == ("alexandria_000.json.bz2", f"bytes={half}-")
    data = (tmp_path / "alexandria_000.json.bz2").read_bytes()
    assert data == body and not part.exists()
    sums = json.loads((tmp_path / "checksums.json").read_text())
    assert sums["alexandria_000.json.bz2"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_published_md5_mismatch_is_refused(tmp_path: Path) -> None:
    body = b"not the published file\n" * 1000
    with _Server({"x.json.gz": body}) as server:
        good = RemoteFile("x.json.gz", f"{server.url}/x.json.gz", hashlib.md5(body).hexdigest())
        bad = RemoteFile("y.json.gz", f"{server.url}/x.json.gz", "0" * 32)
        assert fetch_file(good, tmp_path / "a", progress=False).status == "downloaded"
        with pytest.raises(FetchError, match="differs from the published"):
            fetch_file(bad, tmp_path / "b", progress=False)
        assert not (tmp_path / "b" / "y.json.gz").exists()
        assert not (tmp_path / "b" / "y.json.gz.part").exists()


def test_recorded_sha256_catches_a_changed_file(tmp_path: Path) -> None:
    with _Server({"alexandria_000.json.bz2": b"first version" * 100}) as server:
        remote = RemoteFile("alexandria_000.json.bz2", f"{server.url}/alexandria_000.json.bz2", None)
        fetch_file(remote, tmp_path, progress=False)
        assert fetch_file(remote, tmp_path, progress=False).status == "present"
        # The local copy changes (bit rot, a partial copy): the recorded sha256 catches it.
        (tmp_path / "alexandria_000.json.bz2").write_bytes(b"tampered")
        with pytest.raises(FetchError, match="recorded at first download"):
            fetch_file(remote, tmp_path, progress=False)


def test_cli_fetch_from_a_mirror(tmp_path: Path, capsys) -> None:
    body = _alexandria_bytes(20)
    with _Server({"alexandria_000.json.bz2": body, "alexandria_001.json.bz2": body}) as server:
        code = main(["data", "fetch", "alexandria", "--dest", str(tmp_path), "--url-base", server.url,
                     "--files", "alexandria_000.json.bz2,alexandria_001.json.bz2", "--quiet"])
        assert code == 0
        assert {n for n, _ in server.requests} == {"alexandria_000.json.bz2", "alexandria_001.json.bz2"}
    out = capsys.readouterr().out
    assert out.count("downloaded") == 2
    # The catalog keeps the real URLs and names in one place.
    assert files_for("alexandria")[0].url.endswith("/alexandria_000.json.bz2")
    assert all(f.md5 for f in files_for("mp")) and all(f.md5 for f in files_for("wbm"))


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    remote = RemoteFile("a.bin", "http://127.0.0.1:9/a.bin", None)
    with pytest.raises(FetchError, match="127.0.0.1:9"):
        fetch_file(remote, tmp_path, progress=False, timeout=5)
