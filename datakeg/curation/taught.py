"""Is a held-out question learnable? The share of valid/test questions whose answer some train pair
of the same chunk teaches.

A fine-tune learns the facts its train answers state. A valid or test question written from the
same chunk may ask about a fact no train answer states; no amount of training makes a model answer
it closed book, and it drags the test score down for a reason that has nothing to do with the
model. The rule (:func:`taught_score`):

    a valid/test pair is **taught** when, among the content words of its reference answer that its
    own question does not already give (:meth:`datakeg.curation.quality.Grounding.new_units`), at
    least ``TAUGHT_THRESHOLD`` (80 %) occur in the train answers of its chunk (the union of them),
    and every number of two or more digits in the answer (not in the question) occurs there too.

It is the grounding check of `generate` with the chunk's train answers standing in for the chunk:
the same word units (content words, CJK bigrams), the same five-letter prefix match (``listens`` ~
``listen``), the same hard rule for numbers (a port, a version, a limit is a fact that must be seen).
80 % rather than 100 % leaves room for one connective or rewording word in five ("allowed" against
"permitted") without letting a whole unseen clause through: an answer of five or more new words
with two of them untaught is already untaught. Chunks come from ``OUT/provenance.jsonl``; a row
without provenance is counted apart (not traced), never as taught or untaught.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

TAUGHT_THRESHOLD = 0.8
HELD_OUT = ("valid", "test")
RULE = (f"taught: >= {TAUGHT_THRESHOLD:.0%} of the reference answer's content words not in its question, and every "
        "number, occur in the train answers of the same chunk")


def taught_score(question: str, answer: str, train_answers: list[str]) -> float:
    """Share (0-1) of the answer's new content units found in ``train_answers``; 0.0 when it states a
    number they do not hold; 1.0 when the answer adds nothing to its question."""
    from datakeg.curation.quality import Grounding

    if not train_answers:
        return 0.0
    return Grounding("\n".join(train_answers)).score(answer, question)


def is_taught(question: str, answer: str, train_answers: list[str]) -> bool:
    return taught_score(question, answer, train_answers) >= TAUGHT_THRESHOLD


@dataclass
class Untaught:
    split: str
    line: int
    question: str
    answer: str
    file: str
    chunk: int
    score: float


@dataclass
class TaughtReport:
    threshold: float = TAUGHT_THRESHOLD
    rule: str = RULE
    splits: dict = field(default_factory=dict)  # split -> {"questions", "traced", "taught", "share"}
    untaught: list[Untaught] = field(default_factory=list)

    def to_dict(self, limit: int | None = None) -> dict:
        return {"threshold": self.threshold, "rule": self.rule, "splits": self.splits,
                "untaught": [asdict(u) for u in self.untaught[:limit]],
                **({"untaught_listed": min(limit, len(self.untaught)), "untaught_total": len(self.untaught)}
                   if limit is not None and len(self.untaught) > limit else {})}


def taught_share(out: Path) -> TaughtReport:
    """The taught share of OUT's merged valid and test files (needs ``provenance.jsonl``)."""
    from datakeg.dataset import provenance
    from datakeg.dataset.jsonl import read_rows
    from datakeg.dataset.records import ShapeError, from_row

    out = Path(out)
    sources = provenance.load(out)

    def pairs(split):
        path = out / f"{split}.jsonl"
        if not path.exists():
            return
        line = 0
        for _, value, error in read_rows(path):
            line += 1
            if error:
                continue
            try:
                p = from_row(value)
            except (ShapeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue
            yield line, p.question, p.answer

    from datakeg.curation.quality import Grounding

    taught_by: dict[tuple[str, int], list[str]] = {}
    for line, _q, a in pairs("train"):
        src = sources.get(("train", line))
        if src is not None and src.chunk is not None:
            taught_by.setdefault((src.file, src.chunk), []).append(a)
    report = TaughtReport()
    grounds: dict = {}
    for split in HELD_OUT:
        n = traced = taught = 0
        for line, q, a in pairs(split):
            n += 1
            src = sources.get((split, line))
            if src is None or src.chunk is None or (src.question or "").strip() != q.strip():
                continue
            traced += 1
            key = (src.file, src.chunk)
            if key not in grounds:
                grounds[key] = Grounding("\n".join(taught_by[key])) if key in taught_by else None
            score = grounds[key].score(a, q) if grounds[key] is not None else 0.0
            if score >= TAUGHT_THRESHOLD:
                taught += 1
            else:
                report.untaught.append(Untaught(split, line, q, a, src.file, src.chunk, round(score, 3)))
        report.splits[split] = {"questions": n, "traced": traced, "taught": taught,
                                "share": round(taught / traced, 4) if traced else None}
    return report


def manifest_entry(report: TaughtReport) -> dict:
    """What manifest.json (and from it the dataset card) carries: the rule and the share per split."""
    return {"rule": report.rule, "threshold": report.threshold,
            **{split: dict(v) for split, v in report.splits.items()}, "untaught": len(report.untaught)}


def refresh_taught(out: Path) -> None:
    """Recompute ``taught`` in OUT/manifest.json from the merged files (when both it and the
    provenance exist)."""
    import json

    from datakeg.dataset.provenance import PROVENANCE
    from datakeg.dataset.writers import atomic_write_json

    path = Path(out) / "manifest.json"
    if not path.exists() or not (Path(out) / PROVENANCE).exists():
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(manifest, dict):
        manifest["taught"] = manifest_entry(taught_share(Path(out)))
        atomic_write_json(path, manifest)
