"""Find the documents to read: .md/.txt under SRC, in a stable order, decoded safely.

Problems with single files (binary content, unreadable, empty) never stop the run: they are
returned as ``Skipped`` entries so the caller can report them while the rest is processed.
"""

from __future__ import annotations

import os
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


def iter_source_paths(src: Path, out: Path | None = None) -> list[tuple[Path, str]]:
    """All candidate files under ``src``, sorted by POSIX relative path.

    Hidden files and folders are skipped, as is ``out`` when it lies inside ``src``. Symlinked
    folders are not followed (no loops); symlinked files are read.
    """
    src = src.resolve()
    out_resolved = out.resolve() if out is not None else None
    if src.is_file():
        return [(src, src.name)] if src.suffix.lower() in SUFFIXES else []
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
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
            found.append((full, PurePosixPath(full.relative_to(src).as_posix()).as_posix()))
    found.sort(key=lambda item: item[1])
    return found


def decode(data: bytes) -> tuple[str, str]:
    """Decode document bytes. Returns (text, encoding). Raises ValueError for binary data."""
    if b"\x00" in data[:8192]:
        raise ValueError("binary data (NUL bytes), not a text document")
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise ValueError("not decodable as text in any known encoding")
    return str(best), best.encoding


def read_documents(src: Path, out: Path | None = None,
                   max_bytes: int | None = None) -> tuple[list[Document], list[Skipped]]:
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for path, rel in iter_source_paths(src, out):
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
