"""Crash-safe output: every file is written to a temp file, fsynced, then renamed into place,
so a crash or Ctrl+C never leaves a half-written JSONL behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


def dumps_line(row: dict) -> str:
    """One JSONL line: valid JSON on a single line whatever the content holds."""
    return json.dumps(row, ensure_ascii=False)


def atomic_write_text(path: Path, chunks: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, (dumps_line(r) + "\n" for r in rows))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, [json.dumps(obj, ensure_ascii=False, indent=2) + "\n"])


def per_file_path(out: Path, stem: str, split: str) -> Path:
    return out / f"{stem}_{split}.jsonl"


def per_file_stems(out: Path) -> list[str]:
    """The per-file output stems in OUT: from the manifest when there is one, else from a scan."""
    manifest = out / MANIFEST
    if manifest.exists():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return [f["output"] for f in data.get("files", [])]
    stems = set()
    for split in SPLITS:
        for p in out.rglob(f"*_{split}.jsonl"):
            stems.add(p.relative_to(out).as_posix()[: -len(f"_{split}.jsonl")])
    return sorted(stems)


def merge(out: Path) -> dict[str, int]:
    """(Re)build OUT/train.jsonl, valid.jsonl, test.jsonl from the per-file outputs, in order.

    Always writes all three files (an empty split gives an empty file). Returns rows per split.
    """
    out = Path(out)
    stems = per_file_stems(out)
    counts = {}
    for split in SPLITS:
        lines: list[str] = []
        for stem in stems:
            path = per_file_path(out, stem, split)
            if path.exists():
                lines.extend(line + "\n" for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        atomic_write_text(out / f"{split}.jsonl", lines)
        counts[split] = len(lines)
    return counts
