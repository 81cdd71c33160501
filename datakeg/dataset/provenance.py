"""Where every delivered pair comes from: its source file, chunk and section.

Kept beside the training rows, never inside them (trainers would choke on extra fields):

* ``OUT/.datakeg/provenance/<stem>.json``: one per document, written with its per-file outputs
  (same lock, same moment): the document's chunks (section and text) and, per split, the chunk of
  each row in the order of ``<stem>_<split>.jsonl``, with the row's question.
* ``OUT/provenance.jsonl``: one line per row of the merged ``train/valid/test.jsonl``, in their
  order: ``{"split", "line", "file", "chunk", "section", "question"}`` (``line`` counts from 1), and
  ``OUT/chunks.jsonl``: one line per chunk that any row comes from, ``{"file", "chunk", "section",
  "text"}``. Both are rebuilt by every merge (``generate``, ``merge``, ``audit --remove``), so
  removals and backfill keep them true.

A row is matched to its record by position *and* question: a row whose question no longer matches
(edited by hand) is looked up by its question among the document's records of that split, and gets
``"chunk": null`` when it is not found, rather than a wrong source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datakeg.dataset.jsonl import dumps_line, write_lines

PROVENANCE = "provenance.jsonl"
CHUNKS = "chunks.jsonl"
SIDECAR_DIR = Path(".datakeg") / "provenance"


def qhash(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def pair_id(split: str, file: str, question: str, origin: str = "row") -> str:
    """A pair's identity for the review (:mod:`datakeg.dataset.review_journal`): opaque, made of its
    split, source document and original question (not of its position); a dropped pair
    (``origin`` "reject") is told apart from a delivered one with the same question."""
    key = f"{split}\x00{file}\x00{qhash(question)}" + ("" if origin == "row" else f"\x00{origin}")
    key = key.encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:20]


def sidecar_path(out: Path, stem: str) -> Path:
    return Path(out) / SIDECAR_DIR / f"{stem}.json"


def write_sidecar(out: Path, stem: str, file: str, chunks: Iterable[tuple[str, str]],
                  rows: dict[str, list[tuple[str, int]]]) -> None:
    """Record one document: ``chunks`` as (section, text) in chunk order; ``rows[split]`` as
    (question, chunk index) in the order of the document's per-file output of that split."""
    from datakeg.dataset.atomic import atomic_write_text

    data = {
        "file": file,
        "chunks": [{"section": section, "text": text} for section, text in chunks],
        "rows": {split: [{"question": q, "chunk": c} for q, c in recs] for split, recs in rows.items()},
    }
    atomic_write_text(sidecar_path(out, stem), [json.dumps(data, ensure_ascii=False) + "\n"])


def read_sidecar(out: Path, stem: str) -> dict | None:
    try:
        data = json.loads(sidecar_path(out, stem).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def row_question(raw: str) -> str | None:
    """The (first) question of a JSONL row of any shape datakeg reads; None for text rows."""
    from datakeg.dataset.records import ShapeError, from_row

    try:
        return from_row(json.loads(raw)).question
    except (ShapeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def locate(sidecar: dict | None, split: str, index: int, question: str | None) -> int | None:
    """The chunk index of the ``index``-th row of a document's ``split`` file, or None."""
    if not sidecar or question is None:
        return None
    recs = sidecar.get("rows", {}).get(split, [])
    if index < len(recs) and recs[index].get("question") == question:
        return recs[index].get("chunk")
    # the file changed beside the record (rows removed by the audit, a row edited by hand)
    by_question = sidecar.setdefault("_by_question", {}).get(split)
    if by_question is None:
        by_question = sidecar["_by_question"][split] = {}
        for rec in recs:
            by_question.setdefault(rec.get("question"), rec.get("chunk"))
    return by_question.get(question)


def write_merged(out: Path, rows: dict[str, list[tuple]]) -> dict[str, int]:
    """Write ``provenance.jsonl`` and ``chunks.jsonl`` for merged rows given per split as
    (stem, index in the stem's per-file output, raw line), or as (stem, index or None, raw line,
    original question, chunk) for a row the review changed (edited, or restored from the rejects):
    its chunk is known, and its line carries ``"pair"``, its review identity. Returns rows traced
    per split."""
    out = Path(out)
    sidecars: dict[str, dict | None] = {}
    used: dict[tuple[str, int], dict] = {}
    lines, traced = [], {}
    for split, recs in rows.items():
        traced[split] = 0
        for line, (stem, index, raw, *known) in enumerate(recs, 1):
            if stem not in sidecars:
                sidecars[stem] = read_sidecar(out, stem)
            side = sidecars[stem]
            question = row_question(raw)
            chunk = known[1] if known else locate(side, split, index, question)
            rec = {"split": split, "line": line, "file": side.get("file") if side else None,
                   "chunk": chunk, "section": None, "question": question}
            if known:
                rec["pair"] = known[0]
            if chunk is not None and 0 <= chunk < len(side.get("chunks", [])):
                c = side["chunks"][chunk]
                rec["section"] = c.get("section")
                used[(side["file"], chunk)] = c
                traced[split] += 1
            else:
                rec["chunk"] = None
            lines.append(dumps_line(rec))
    write_lines(out / PROVENANCE, lines)
    write_lines(out / CHUNKS, (dumps_line({"file": f, "chunk": i, "section": c.get("section"), "text": c.get("text")})
                               for (f, i), c in sorted(used.items())))
    return traced


@dataclass(frozen=True)
class Source:
    """Where one row comes from."""

    split: str
    line: int
    file: str | None
    chunk: int | None
    section: str | None
    question: str | None
    text: str | None  # the chunk's text


def load(out: Path) -> dict[tuple[str, int], Source]:
    """The provenance of OUT's merged rows, keyed by (split, line) with lines counted from 1.
    Empty when OUT has no ``provenance.jsonl`` (an OUT written before datakeg 0.3)."""
    from datakeg.dataset.jsonl import read_rows

    out = Path(out)
    if not (out / PROVENANCE).exists():
        return {}
    texts = {}
    if (out / CHUNKS).exists():
        for _, value, error in read_rows(out / CHUNKS):
            if not error and isinstance(value, dict):
                texts[(value.get("file"), value.get("chunk"))] = value.get("text")
    found = {}
    for _, value, error in read_rows(out / PROVENANCE):
        if error or not isinstance(value, dict):
            continue
        key = (value.get("file"), value.get("chunk"))
        found[(value.get("split"), value.get("line"))] = Source(
            value.get("split"), value.get("line"), value.get("file"), value.get("chunk"), value.get("section"),
            value.get("question"), texts.get(key) if value.get("chunk") is not None else None)
    return found
