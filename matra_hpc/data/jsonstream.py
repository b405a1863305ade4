"""Stream records out of large JSON files without loading them whole.

The published dumps are single JSON documents of 1-10 GB (an array of entries, an object with
an ``entries`` array, or a pandas ``to_json`` column table), or JSON lines. This module cuts
them into the raw text of one record at a time with a string-aware bracket scan (a C regex),
so a rank can skip records it does not own without decoding them, and a corrupt record is
isolated to itself instead of ending the file.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# A complete JSON string, an unterminated string at the end of the buffer, or a bracket.
_TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*")|(?P<open_string>"(?:[^"\\]|\\.)*\\?\Z)|(?P<bracket>[\[\]{}])', re.S
)
_SCALAR_END = re.compile(r"[,\]\}\s]")
_SPACE = re.compile(r"[\s,]*")
_CHUNK = 1 << 20


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, decompressing ``.gz``/``.bz2``/``.xz`` on the fly."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@dataclass
class RawRecord:
    """The undecoded text of one record and where it sits in its file."""

    index: int
    """Position of the record in the file (0-based, corrupt records included)."""
    text: str
    key: str | None = None
    """Member name when the records are the members of an object (pandas column tables)."""
    truncated: bool = False
    """The file ended inside this record."""


class _Buffer:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.s = ""
        self.i = 0
        self.eof = False

    def fill(self, size: int = _CHUNK) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(size)
        if not chunk:
            self.eof = True
            return False
        # Drop the consumed prefix so memory stays at the size of the current record.
        self.s = self.s[self.i :] + chunk
        self.i = 0
        return True

    def skip_space(self) -> str:
        """Skip whitespace and commas; return the next character ('' at end of file)."""
        while True:
            m = _SPACE.match(self.s, self.i)
            self.i = m.end()
            if self.i < len(self.s):
                return self.s[self.i]
            if not self.fill():
                return ""

    def take_value(self) -> tuple[str, bool]:
        """Cut the next JSON value; returns (text, complete)."""
        self.skip_space()
        first = self.s[self.i] if self.i < len(self.s) else ""
        if first in "[{":
            return self._take_container()
        if first == '"':
            return self._take_container(string_only=True)
        # A scalar: ends at the next delimiter.
        while True:
            m = _SCALAR_END.search(self.s, self.i)
            if m is not None:
                text, self.i = self.s[self.i : m.start()], m.start()
                return text, True
            if not self.fill():
                text, self.i = self.s[self.i :], len(self.s)
                return text, bool(text)

    def _take_container(self, string_only: bool = False) -> tuple[str, bool]:
        start = self.i
        depth = 0
        pos = start
        while True:
            for m in _TOKEN.finditer(self.s, pos):
                if m.lastgroup == "open_string":
                    pos = m.start()  # the string runs past the buffer: rescan it after a read
                    break
                if m.lastgroup == "string":
                    pos = m.end()
                    if string_only and depth == 0:
                        self.i = pos
                        return self.s[start:pos], True
                    continue
                depth += 1 if m.group() in "[{" else -1
                pos = m.end()
                if depth == 0:
                    self.i = pos
                    return self.s[start:pos], True
            else:
                pos = len(self.s)
            if not self.fill(max(_CHUNK, len(self.s))):
                text = self.s[start:]
                self.i = len(self.s)
                return text, False
            # fill() re-based the buffer at self.i, which is still ``start``.
            pos -= start
            start = 0


def iter_raw_records(path: str | Path, record_keys: tuple[str, ...] = ("entries", "entry")) -> Iterator[RawRecord]:
    """Yield the raw text of each record of a JSON or JSON-lines file, in file order.

    Shapes understood: JSON lines (``.jsonl``); a top-level array of records; a top-level object
    whose member named in ``record_keys`` is an array or object of records (other members are
    skipped). A record that does not close before end of file is yielded with
    ``truncated=True``.
    """
    name = str(path)
    with open_text(path) as stream:
        if ".jsonl" in Path(name).name:
            index = 0
            for line in stream:
                if line.strip():
                    yield RawRecord(index=index, text=line)
                    index += 1
            return
        yield from _iter_document(_Buffer(stream), record_keys)


def iter_side_members(path: str | Path, names: tuple[str, ...]) -> dict[str, object]:
    """Decode the small top-level members ``names`` of a JSON object file (e.g. a pandas
    ``material_id`` column), skipping every other member without decoding it."""
    found: dict[str, object] = {}
    with open_text(path) as stream:
        buf = _Buffer(stream)
        if buf.skip_space() != "{":
            return found
        buf.i += 1
        while True:
            c = buf.skip_space()
            if c in ("}", ""):
                return found
            key_text, _ = buf.take_value()
            buf.skip_space()
            if buf.s[buf.i : buf.i + 1] == ":":
                buf.i += 1
            value_text, complete = buf.take_value()
            key = json.loads(key_text)
            if key in names and complete:
                found[key] = json.loads(value_text)
                if len(found) == len(names):
                    return found


def _iter_document(buf: _Buffer, record_keys: tuple[str, ...]) -> Iterator[RawRecord]:
    first = buf.skip_space()
    if first == "[":
        buf.i += 1
        yield from _iter_container(buf, "]", keyed=False)
    elif first == "{":
        buf.i += 1
        while True:
            c = buf.skip_space()
            if c in ("}", ""):
                return
            key_text, _ = buf.take_value()
            buf.skip_space()
            if buf.s[buf.i : buf.i + 1] == ":":
                buf.i += 1
            key = json.loads(key_text)
            nxt = buf.skip_space()
            if key in record_keys and nxt in "[{" and nxt:
                buf.i += 1
                yield from _iter_container(buf, "]" if nxt == "[" else "}", keyed=nxt == "{")
            else:
                buf.take_value()
    elif first:
        raise ValueError(f"not a JSON array or object (starts with {first!r})")


def _iter_container(buf: _Buffer, close: str, keyed: bool) -> Iterator[RawRecord]:
    index = 0
    while True:
        c = buf.skip_space()
        if c == close or c == "":
            if c:
                buf.i += 1
            return
        key = None
        if keyed:
            key_text, _ = buf.take_value()
            buf.skip_space()
            if buf.s[buf.i : buf.i + 1] == ":":
                buf.i += 1
            try:
                key = json.loads(key_text)
            except json.JSONDecodeError:
                key = key_text
        text, complete = buf.take_value()
        yield RawRecord(index=index, text=text, key=key, truncated=not complete)
        index += 1
        if not complete:
            return


def decode_record(raw: RawRecord) -> object:
    """Decode one raw record; raises ``ValueError`` for corrupt or truncated text."""
    if raw.truncated:
        raise ValueError("file ends inside this record (truncated download?)")
    return json.loads(raw.text)


def read_all(path: str | Path) -> list[object]:
    """Decode every record (tests and small files)."""
    return [decode_record(r) for r in iter_raw_records(path)]


__all__ = ["RawRecord", "decode_record", "iter_raw_records", "iter_side_members", "open_text", "read_all"]
