"""Find the documents to read: .md/.txt under SRC, in a stable order, decoded safely.

Problems with single files (binary content, unreadable, empty) never stop the run: they are
returned as ``Skipped`` entries so the caller can report them while the rest is processed; so are
folders that cannot be listed (never silently left out).

``relpath`` is always a str that encodes as UTF-8 (usable in JSON and as an output stem): bytes of
a file name that are not UTF-8 (``b"caf\\xe9.md"`` on Linux) are shown as ``%XX`` (``caf%E9.md``).

Decoding (:func:`decode`): a byte order mark first (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE), then NUL
bytes mean binary, then UTF-8, then legacy code pages through charset-normalizer, with cp1252
(a superset of Latin-1's printable range) preferred for Latin-script text unless the other
candidate reads clearly better (short Western European texts are otherwise often taken for
cp1250/cp1257 and garbled).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SUFFIXES = (".md", ".markdown", ".txt")


@dataclass(frozen=True)
class Document:
    path: Path  # absolute path on disk
    relpath: str  # POSIX relative path from SRC, e.g. "a/README.md"
    text: str
    encoding: str = "utf-8"

    @property
    def kind(self) -> str:
        return "txt" if self.relpath.lower().endswith(".txt") else "md"


@dataclass(frozen=True)
class Skipped:
    relpath: str
    reason: str


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_relpath(rel: str) -> str:
    """``rel`` made encodable as UTF-8: undecodable file-name bytes (surrogate escapes, as
    ``os.fsdecode`` gives them) become ``%XX``; any other lone surrogate becomes ``%uXXXX``."""
    def repl(m: re.Match) -> str:
        code = ord(m.group())
        return f"%{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"%u{code:04X}"

    return _SURROGATE.sub(repl, rel)


def _walk(src: Path, out: Path | None, skipped: list[Skipped]) -> list[tuple[Path, str]]:
    src = src.resolve()
    out_resolved = out.resolve() if out is not None else None
    if src.is_file():
        return [(src, safe_relpath(src.name))] if src.suffix.lower() in SUFFIXES else []

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else src
        try:
            rel = where.relative_to(src).as_posix()
        except ValueError:
            rel = str(where)
        skipped.append(Skipped(safe_relpath(rel if rel != "." else str(src)) + "/",
                               f"unreadable folder ({exc.strerror or exc}); its files were not read"))

    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False, onerror=unreadable):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            if out_resolved is not None and (here / d).resolve() == out_resolved:
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(SUFFIXES):
                continue
            full = here / name
            if out_resolved is not None and _is_inside(full.resolve(), out_resolved):
                continue
            found.append((full, safe_relpath(PurePosixPath(full.relative_to(src).as_posix()).as_posix())))
    found.sort(key=lambda item: item[1])
    return found


def iter_source_paths(src: Path, out: Path | None = None) -> list[tuple[Path, str]]:
    """All candidate files under ``src``, sorted by POSIX relative path (see :func:`safe_relpath`).

    Hidden files and folders are skipped, as is ``out`` when it lies inside ``src``. Symlinked
    folders are not followed (no loops); symlinked files are read. Folders that cannot be listed
    are left out here; :func:`read_documents` reports them.
    """
    return _walk(src, out, [])


_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8-sig", "utf-8"),
    (b"\xff\xfe", "utf-16", "utf-16-le"),
    (b"\xfe\xff", "utf-16", "utf-16-be"),
)
WESTERN = "cp1252"
_WESTERN_FAMILY = {"cp1252", "windows-1252", "latin_1", "latin-1", "iso8859_1", "iso-8859-1", "iso8859_15", "ascii"}
PREFER_WESTERN_MARGIN = 2.0  # py3langid log-probability another code page must gain to beat cp1252


def _clean(text: str) -> bool:
    """No control characters besides tab, newline, CR and form feed (C1 controls included)."""
    return not any((ord(c) < 32 and c not in "\t\n\r\f") or 0x7F <= ord(c) < 0xA0 for c in text)


def _mostly_latin(text: str) -> bool:
    letters = [c for c in text[:20000] if c.isalpha()]
    if not letters:
        return True
    latin = sum(1 for c in letters if c.isascii() or unicodedata.name(c, "").startswith("LATIN"))
    return latin >= 0.9 * len(letters)


def _langid_score(text: str) -> float:
    import py3langid

    return float(py3langid.classify(text[:5000])[1])


def decode(data: bytes) -> tuple[str, str]:
    """Decode document bytes. Returns (text, encoding). Raises ValueError for binary data."""
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec), name
            except UnicodeDecodeError as exc:
                raise ValueError(f"starts with a {name} byte order mark but is not valid {name} ({exc.reason})") \
                    from None
    if b"\x00" in data[:8192]:
        raise ValueError("binary data (NUL bytes and no UTF-16/UTF-32 byte order mark), not a text document")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    try:
        western = data.decode(WESTERN)
        western = western if _clean(western) else None
    except UnicodeDecodeError:
        western = None
    best = from_bytes(data).best()
    if best is None:
        if western is not None:
            return western, WESTERN
        raise ValueError("not decodable as text in any known encoding")
    text, encoding = str(best), best.encoding
    if western is None or encoding.lower() in _WESTERN_FAMILY:
        return text, encoding
    if western == text:
        return western, WESTERN
    # both read as Latin-script text: keep cp1252 unless the other reads clearly better
    if _mostly_latin(text) and _mostly_latin(western) and len(text) == len(western):
        if _langid_score(text) - _langid_score(western) <= PREFER_WESTERN_MARGIN:
            return western, WESTERN
    return text, encoding


def read_documents(src: Path, out: Path | None = None,
                   max_bytes: int | None = None) -> tuple[list[Document], list[Skipped]]:
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for path, rel in _walk(src, out, skipped):
        try:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                skipped.append(Skipped(rel, f"{size / 1024 / 1024:.1f} MB is over the --max-file-mb limit of "
                                            f"{max_bytes / 1024 / 1024:g} MB"))
                continue
            data = path.read_bytes()
        except OSError as exc:
            skipped.append(Skipped(rel, f"unreadable ({exc.strerror or exc})"))
            continue
        try:
            text, encoding = decode(data)
        except ValueError as exc:
            skipped.append(Skipped(rel, str(exc)))
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            skipped.append(Skipped(rel, "empty file"))
            continue
        docs.append(Document(path=path, relpath=rel, text=text, encoding=encoding))
    return docs, skipped


def output_stems(relpaths: list[str]) -> dict[str, str]:
    """Map each source relpath to the stem of its per-file outputs, mirroring the folders.

    ``a/README.md`` -> ``a/README``. When two sources would share a stem (``x.md`` and ``x.txt``
    in one folder) both keep their extension (``x.md``, ``x.txt``) so nothing is overwritten.
    """
    def strip(rel: str) -> str:
        p = PurePosixPath(rel)
        return str(p.with_suffix("")) if p.suffix else rel

    counts: dict[str, int] = {}
    for rel in relpaths:
        counts[strip(rel).lower()] = counts.get(strip(rel).lower(), 0) + 1
    return {rel: (rel if counts[strip(rel).lower()] > 1 else strip(rel)) for rel in relpaths}
