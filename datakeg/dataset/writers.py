"""Crash-safe output: every file is written to a temp file, fsynced, then renamed into place,
so a crash or Ctrl+C never leaves a half-written JSONL behind. JSONL goes through
``datakeg.dataset.jsonl`` (lines split on "\n" only, every line valid JSON).

Never destroy data: :func:`merge` refuses (``ConfigError``) rather than rebuild the merged files
from nothing, and stops at an unreadable per-file line rather than drop it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from datakeg.dataset.atomic import atomic_write_text
from datakeg.dataset.jsonl import dumps, load_rows, write_lines, write_rows
from datakeg.dataset.provenance import write_merged as write_merged_provenance
from datakeg.dataset.splits import SPLITS

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically (``datakeg.dataset.jsonl.write_rows``). Returns the rows written."""
    return write_rows(path, rows)


def atomic_write_json(path: Path, obj) -> None:
    # allow_nan: a stray NaN in a report must not lose the manifest at the end of a long run
    atomic_write_text(path, [dumps(obj, indent=2, allow_nan=True) + "\n"])


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


def has_per_file_outputs(out: Path, stems: list[str] | None = None) -> bool:
    """Whether OUT holds any per-file output to rebuild the merged files from (``stems``: those of
    :func:`per_file_stems`, when the caller has them already)."""
    out = Path(out)
    stems = per_file_stems(out) if stems is None else stems
    return any(per_file_path(out, stem, split).exists() for stem in stems for split in SPLITS)


def merge(out: Path) -> dict[str, int]:
    """(Re)build OUT/train.jsonl, valid.jsonl, test.jsonl from the per-file outputs, in order.

    Writes all three files (a split no document has rows for gives an empty file) and returns the
    rows per split, and the provenance of every merged row (:mod:`datakeg.dataset.provenance`).
    The review's decisions (:mod:`datakeg.dataset.review_journal`) are applied: rejected rows are
    left out, edited rows carry the edit, restored pairs are added after their document's rows;
    their counts go to the manifest's ``"review"``. Refuses with ``ConfigError`` when OUT holds no per-file output at all (the
    rebuild would empty the merged files), and with ``JsonlError`` at a per-file line that is not
    valid JSON; in both cases nothing is written. Lines are copied as they are.
    """
    from datakeg.errors import ConfigError

    out = Path(out)
    stems = per_file_stems(out)
    if not has_per_file_outputs(out, stems):
        listed = (f" ({MANIFEST} lists {len(stems)} file(s), but none of their outputs exist)"
                  if stems else "")
        raise ConfigError(
            f"{out} holds no per-file outputs (<name>_train.jsonl, <name>_valid.jsonl, <name>_test.jsonl)"
            f"{listed}; merge rebuilds train.jsonl, valid.jsonl and test.jsonl from them, so it would empty them.",
            "Nothing was changed. Point it at an output folder of `datakeg generate`, which keeps the per-file "
            "outputs next to the merged files.")
    from datakeg.dataset.review_journal import apply, journal_path

    if journal_path(out).exists():  # the review's decisions (datakeg review)
        merged, review = apply(out, stems)
        write_review_counts(out, review)
    else:
        merged = {}
        for split in SPLITS:  # read everything first: a bad line stops the merge before anything is written
            merged[split] = []
            for stem in stems:
                path = per_file_path(out, stem, split)
                if path.exists():
                    merged[split].extend((stem, i, raw) for i, (_, _, raw) in enumerate(load_rows(path)))
    counts = {split: write_lines(out / f"{split}.jsonl", (r[2] for r in rows)) for split, rows in merged.items()}
    write_merged_provenance(out, merged)
    return counts


def write_review_counts(out: Path, review: dict[str, int]) -> None:
    """Record what the last merge applied of the review in ``manifest.json`` (``"review"``)."""
    manifest = Path(out) / MANIFEST
    if not manifest.exists():
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    old = data.get("review") if isinstance(data.get("review"), dict) else {}
    # what `generate --refill` did still describes the files (merge does not undo it)
    review = {**{k: old[k] for k in ("refill_removed", "refilled") if k in old}, **review}
    if data.get("review") != review:
        data["review"] = review
        atomic_write_json(manifest, data)
