"""Check dataset files line by line, and a datakeg output folder for cross-split duplicates.

Files are read with ``datakeg.dataset.jsonl`` (through ``convert.iter_rows``): lines split on "\\n" only,
every undecodable line reported with its number."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datakeg.dataset.conversion import iter_rows
from datakeg.dataset.records import ShapeError, detect_shape, to_conversation

SPLITS = ("train", "valid", "test")


@dataclass
class FileReport:
    path: Path
    rows: int = 0
    shapes: Counter = field(default_factory=Counter)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def shape(self) -> str | None:
        return self.shapes.most_common(1)[0][0] if self.shapes else None

    @property
    def empty(self) -> bool:
        """No rows at all: a normal result for a split that got no pairs (see ``require_rows``)."""
        return self.rows == 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_file(path: Path, require_rows: bool = False) -> FileReport:
    """Check every line of ``path``. An empty file is reported as empty (``FileReport.empty``), and
    is a problem only with ``require_rows``."""
    report = FileReport(Path(path))
    first_shape = None
    for lineno, value, error in iter_rows(path):
        report.rows += 1
        if error:
            report.problems.append((lineno, error))
            continue
        shape = detect_shape(value)
        if shape is None:
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
            report.problems.append((lineno, f"unknown row shape (keys: {keys})"))
            continue
        report.shapes[shape] += 1
        if first_shape is None:
            first_shape = shape
        elif shape != first_shape:
            report.problems.append((lineno, f"shape {shape} differs from the file's first rows ({first_shape})"))
            continue
        try:
            if shape == "text":
                if not isinstance(value.get("text"), str) or not value["text"].strip():
                    raise ShapeError('"text" is empty')
            else:
                to_conversation(value, shape)
        except ShapeError as exc:
            report.problems.append((lineno, str(exc)))
    if report.rows == 0 and require_rows:
        report.problems.append((0, "the file holds no rows"))
    return report


def cross_split_duplicates(out: Path, threshold: float = 90.0) -> list[tuple[str, int, str, str]]:
    """Questions in valid/test that equal or nearly equal (rapidfuzz >= threshold) a train question.
    Plain ``{"text"}`` rows (a ``convert`` output: chatml, llama3, ...) hold no question to extract:
    for them only identical rows count (a similarity over whole rendered rows would flag different
    pairs that share a long system message).

    Returns (split, line number, question or text, matching train question or text)."""
    from rapidfuzz import fuzz, process

    from datakeg.curation.quality import normalize_question

    def questions(split: str) -> list[tuple[int, str, bool]]:
        path = Path(out) / f"{split}.jsonl"
        found = []
        if not path.exists():
            return found
        for lineno, value, error in iter_rows(path):
            shape = None if error else detect_shape(value)
            if shape is None:
                continue
            if shape == "text":
                if isinstance(value.get("text"), str) and value["text"].strip():
                    found.append((lineno, value["text"], True))
                continue
            try:
                found.append((lineno, to_conversation(value, shape).first_pair().question, False))
            except ShapeError:
                continue
        return found

    train = questions("train")
    train_norm = [normalize_question(q) for _, q, is_text in train if not is_text]
    train_q = [q for _, q, is_text in train if not is_text]
    train_texts = {q.strip() for _, q, is_text in train if is_text}
    hits = []
    for split in ("valid", "test"):
        for lineno, q, is_text in questions(split):
            if is_text:
                if q.strip() in train_texts:
                    hits.append((split, lineno, q, q))
                continue
            match = process.extractOne(normalize_question(q), train_norm, scorer=fuzz.token_sort_ratio,
                                       processor=None, score_cutoff=threshold) if train_norm else None
            if match:
                hits.append((split, lineno, q, train_q[match[2]]))
    return hits


def text_rows(paths: list[Path]) -> bool:
    """Whether any of ``paths`` holds plain ``{"text"}`` rows (judged by its first rows)."""
    from datakeg.dataset.conversion import detect_file_shape

    return any(detect_file_shape(p)[0] == "text" for p in paths)


def dataset_files(target: Path) -> tuple[list[Path], bool]:
    """Files to validate and whether ``target`` is a datakeg output folder."""
    target = Path(target)
    if target.is_file():
        return [target], False
    merged = [target / f"{s}.jsonl" for s in SPLITS if (target / f"{s}.jsonl").exists()]
    if merged:
        return merged, (target / "manifest.json").exists() or len(merged) == 3
    return sorted(p for p in target.rglob("*.jsonl") if p.name != "rejects.jsonl"), False
