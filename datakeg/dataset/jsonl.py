"""The one JSONL reader and writer of the package. Every module reads and writes JSONL through it.

Invariants:

* Lines are split on ``"\\n"`` only. ``str.splitlines()`` (and anything built on it) is never used:
  it also splits on U+2028, U+2029, U+0085, \\x1c-\\x1e, \\x0b and \\x0c, which ``json.dumps(...,
  ensure_ascii=False)`` leaves raw inside strings, so it would cut valid rows in two.
* Every written line is exactly one valid JSON value, whatever the text holds: ``json.dumps``
  escapes the control characters (NUL included), lone surrogates (``"\\ud800"`` decoded from a
  model's JSON) are written as ``\\uXXXX`` escapes instead of failing to encode, and NaN/Infinity
  are refused (they are not JSON).
* Blank lines are those holding only JSON whitespace (space, tab, CR); a line holding anything
  else that does not decode is reported with its line number, never silently dropped.
* A UTF-8 byte order mark at the start of a file is ignored; CRLF line ends are accepted.
* Files are written atomically (temp file, fsync, ``os.replace``; see ``datakeg.dataset.atomic``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from datakeg.dataset.atomic import atomic_write_text
from datakeg.errors import DatakegError

_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = b"\xef\xbb\xbf"
JSON_WHITESPACE = " \t\r"  # "\n" never reaches a line


class JsonlError(DatakegError):
    """A line of a JSONL file that is not valid UTF-8 JSON (``path`` and ``lineno`` say where)."""

    def __init__(self, path: Path, lineno: int, problem: str):
        super().__init__(f"{path} line {lineno}: {problem}", "Check the file with `datakeg validate`.")
        self.path, self.lineno, self.problem = Path(path), lineno, problem


def dumps(obj, *, indent: int | None = None, allow_nan: bool = False) -> str:
    """``json.dumps(obj, ensure_ascii=False)`` that always encodes as UTF-8: lone surrogates are
    written as ``\\uXXXX`` escapes (they can only occur inside strings). NaN/Infinity are refused
    unless ``allow_nan``."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=allow_nan, indent=indent)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def dumps_line(obj) -> str:
    """One JSONL line (without its ``"\\n"``): a single line of valid JSON whatever ``obj`` holds."""
    return dumps(obj)


def is_blank(raw: str) -> bool:
    """True for a line holding only JSON whitespace (not for \\x1c, U+2028 and the like)."""
    return not raw.strip(JSON_WHITESPACE)


def _byte_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:  # binary iteration splits on b"\n" only
        for lineno, line in enumerate(fh, 1):
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            yield lineno, line[:-1] if line.endswith(b"\n") else line


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text without its ``"\\n"``) for every line, blank ones included.

    Raises :class:`JsonlError` at a line that is not valid UTF-8."""
    for lineno, raw in _byte_lines(path):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonlError(path, lineno, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_rows(path: Path, *, allow_array: bool = False) -> Iterator[tuple[int, object | None, str | None]]:
    """(line number, decoded value or None, error or None) for each non-blank line, streamed.

    Errors (invalid UTF-8, invalid JSON) are reported per line and reading goes on. With
    ``allow_array``, a file whose first non-blank character is ``[`` is read as one JSON array,
    one element per row (numbered from 1)."""
    path = Path(path)
    if allow_array:
        with open(path, "rb") as fh:
            chunk = fh.read(4096)
            chunk = chunk[len(_BOM):] if chunk.startswith(_BOM) else chunk
            while chunk and not chunk.strip():
                chunk = fh.read(4096)
            head = chunk.lstrip()[:1]
        if head == b"[":
            try:
                data = json.loads(path.read_bytes().decode("utf-8-sig"))
            except UnicodeDecodeError as exc:
                yield 1, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
                return
            except json.JSONDecodeError as exc:
                yield exc.lineno, None, f"invalid JSON array: {exc.msg}"
                return
            if not isinstance(data, list):
                yield 1, None, "invalid JSON array"
                return
            for i, value in enumerate(data, 1):
                yield i, value, None
            return
    for lineno, raw in _byte_lines(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
            continue
        if is_blank(text):
            continue
        try:
            yield lineno, json.loads(text), None
        except json.JSONDecodeError as exc:
            yield lineno, None, f"invalid JSON: {exc.msg} at column {exc.colno}"


def load_rows(path: Path) -> list[tuple[int, object, str]]:
    """Every non-blank line as (line number, value, the line's text), read strictly: raises
    :class:`JsonlError` at the first line that is not valid JSON, so no row is ever lost unnoticed."""
    rows = []
    for lineno, raw in iter_lines(path):
        if is_blank(raw):
            continue
        try:
            rows.append((lineno, json.loads(raw), raw.rstrip(JSON_WHITESPACE)))
        except json.JSONDecodeError as exc:
            raise JsonlError(path, lineno, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    return rows


def write_rows(path: Path, rows: Iterable) -> int:
    """Write ``rows`` (any JSON values) as JSONL, atomically. Returns the number of rows written."""
    count = 0

    def lines():
        nonlocal count
        for row in rows:
            yield dumps_line(row) + "\n"
            count += 1

    atomic_write_text(Path(path), lines())
    return count


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write already-serialised JSONL lines (each one JSON value, no ``"\\n"`` inside), atomically.
    Returns the number of lines written."""
    count = 0

    def chunks():
        nonlocal count
        for line in lines:
            if "\n" in line:
                raise ValueError("a JSONL line must not contain a newline")
            yield line + "\n"
            count += 1

    atomic_write_text(Path(path), chunks())
    return count
