"""Human review decisions (``datakeg review``), kept as data in OUT and applied by every merge.

``OUT/.datakeg/review.jsonl`` is an append-only journal: one line per decision, written with
``fsync`` before the decision is reported as saved, so a crash loses at most the decision being
written (a torn last line is ignored when read). Each line holds the pair's *whole* state after the
decision, so the newest line of a pair is its state::

    {"pair", "split", "file", "qhash", "origin", "version", "action", "status",
     "question", "answer", "note", "original_question", "original_answer", "chunk", "at"}

* **Identity** (``pair``): the split, the source document (its path under SRC) and a hash of the
  pair's *original* question, the one the model wrote (and, for a dropped pair, that it was dropped:
  a junk copy of a delivered pair's question is another pair). It does not depend on positions, so it
  survives ``merge``, the leakage audit removing other rows, ``generate --resume`` of other
  documents and a restart of the review server. Two rows of one split and document with the same
  question (the quality gates keep that from happening) would share one decision.
* ``origin`` is ``"row"`` for a delivered pair (a line of a per-file output) and ``"reject"`` for a
  pair the gates or the audit dropped (a ``dropped_pair`` line of ``rejects.jsonl``).
* ``status``: ``pending``, ``kept``, ``rejected`` or ``restored`` (a dropped pair put back);
  ``question`` / ``answer``: the edited text, or null when unedited; ``note``: free text.
* ``version`` counts the pair's decisions: a decision made on an older version is refused (two tabs).
* ``action`` ``undo`` goes back to the state before the pair's previous (not undone) decision.

:func:`apply` is what merge runs: rejected rows are left out of the merged files, edited rows carry
the edited text (in the row's own shape), restored pairs are added after their document's rows.
The per-file outputs keep what the model wrote, so the decisions are applied again, identically,
by every later merge (``generate`` and ``audit --remove`` merge too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datakeg.dataset.jsonl import dumps_line, read_rows
from datakeg.dataset.provenance import pair_id, qhash  # noqa: F401  (the identity, defined with the provenance)

REVIEW = Path(".datakeg") / "review.jsonl"
STATUSES = ("pending", "kept", "rejected", "restored")
ACTIONS = ("keep", "reject", "edit", "restore", "note", "undo")


def journal_path(out: Path) -> Path:
    return Path(out) / REVIEW


def read(out: Path) -> list[dict]:
    """Every decision in journal order (unreadable lines, e.g. one torn by a crash, are skipped)."""
    path = journal_path(out)
    if not path.exists():
        return []
    return [v for _, v, err in read_rows(path) if not err and isinstance(v, dict) and isinstance(v.get("pair"), str)]


def states(out: Path) -> dict[str, dict]:
    """The newest state of every reviewed pair, by pair id."""
    return {rec["pair"]: rec for rec in read(out)}


def append(out: Path, record: dict) -> None:
    """Append one decision and fsync it (call it holding OUT's lock)."""
    append_many(out, [record])


def append_many(out: Path, records: list[dict]) -> None:
    """Append decisions in one write and one fsync (a bulk action; call it holding OUT's lock)."""
    path = journal_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "".join(dumps_line(r) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def included(state: dict | None, origin: str) -> bool:
    """Whether a pair of ``origin`` with this review state belongs in the merged files."""
    status = (state or {}).get("status", "pending")
    return status == "restored" if origin == "reject" else status != "rejected"


def summary(out: Path, recs: dict[str, dict] | None = None) -> dict[str, int]:
    """Counts of the review decisions in OUT: reviewed (pairs with a decision), kept, edited,
    rejected, restored, noted, and decisions (lines of the journal)."""
    lines = read(out) if recs is None else None
    recs = {r["pair"]: r for r in lines} if recs is None else recs
    c = {"reviewed": 0, "kept": 0, "edited": 0, "rejected": 0, "restored": 0, "noted": 0,
         "decisions": len(lines) if lines is not None else sum(r.get("version", 0) for r in recs.values())}
    for r in recs.values():
        status = r.get("status", "pending")
        edited = r.get("question") is not None or r.get("answer") is not None
        if status != "pending" or edited:
            c["reviewed"] += 1
        if status in c:
            c[status] += 1
        c["edited"] += edited
        c["noted"] += bool(r.get("note"))
    return c


# ---------------------------------------------------------------- editing a row in its own shape
def edit_row(row: dict, question: str | None, answer: str | None) -> dict:
    """``row`` (any shape datakeg writes or reads) with its (first) question and answer replaced."""
    from datakeg.dataset.records import detect_shape

    row = json.loads(json.dumps(row))
    shape = detect_shape(row)
    if shape == "completion":
        if question is not None:
            row["prompt"] = question
        if answer is not None:
            comp = row.get("completion") or ""
            think = comp[: comp.find("</think>") + len("</think>")] if comp.lstrip().startswith("<think>") \
                and "</think>" in comp else ""
            row["completion"] = f"{think}\n{answer}" if think else answer
    elif shape == "reasoning":
        if question is not None:
            row["question"] = question
        if answer is not None:
            row["answer"] = answer
    elif shape == "alpaca":
        if question is not None:
            row["instruction"], row["input"] = question, ""
        if answer is not None:
            row["output"] = answer
    elif shape in ("chat", "sharegpt"):
        key, role_key, text_key = ("messages", "role", "content") if shape == "chat" else \
            ("conversations", "from", "value")
        user = ("user",) if shape == "chat" else ("human", "user")
        bot = ("assistant",) if shape == "chat" else ("gpt", "assistant", "model")
        turns = row.get(key) or []
        qi = next((i for i, m in enumerate(turns) if m.get(role_key) in user), None)
        ai = next((i for i, m in enumerate(turns) if m.get(role_key) in bot and (qi is None or i > qi)), None)
        if question is not None and qi is not None:
            turns[qi][text_key] = question
        if answer is not None and ai is not None:
            content = turns[ai].get(text_key) or ""
            think = content[: content.find("</think>") + len("</think>")] if content.lstrip().startswith("<think>") \
                and "</think>" in content else ""
            turns[ai][text_key] = f"{think}\n{answer}" if think else answer
    return row


def new_row(out: Path, like: dict | None, question: str, answer: str) -> dict:
    """A row for a restored pair: the shape of ``like`` (a row of the same document) when given,
    else the format the run in OUT was generated with."""
    from datakeg.dataset.records import Pair, to_row

    if like is not None:
        row = {k: v for k, v in edit_row(like, question, answer).items() if k != "scores"}
        # a conversation keeps its system turn and this one exchange: the later turns of ``like``
        # belong to another pair (maybe of another split), and copying them would leak them
        for key, role_key, bot in (("messages", "role", ("assistant",)),
                                   ("conversations", "from", ("gpt", "assistant", "model"))):
            turns = row.get(key)
            if isinstance(turns, list):
                first = next((i for i, m in enumerate(turns) if isinstance(m, dict) and m.get(role_key) in bot), None)
                if first is not None:
                    row[key] = turns[:first + 1]
        return row
    settings = {}
    try:
        settings = json.loads((Path(out) / ".datakeg" / "run.json").read_text(encoding="utf-8")).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        pass
    return to_row(Pair(question, answer), settings.get("format") or "completion",
                  settings.get("reasoning_format") or "separate", settings.get("system_message"))


# ---------------------------------------------------------------- what there is to review
@dataclass
class Item:
    """One pair to review: a delivered row or a dropped pair, with where it comes from."""

    pair: str
    split: str
    file: str
    origin: str  # "row" or "reject"
    question: str  # as generated
    answer: str
    chunk: int | None
    section: str | None
    stem: str | None = None  # per-file output stem (rows)
    index: int | None = None  # position in the per-file output (rows)
    reason: str | None = None  # why it was dropped (rejects)
    similar_question: str | None = None
    turns: list | None = None  # a multi-turn row's turns after the first question and answer


def items(out: Path, stems: list[str], sidecars: dict[str, dict | None]) -> Iterator[tuple[Item, str | None]]:
    """Every pair of OUT to review, as (item, the row's raw line or None): the per-file outputs'
    rows (split by split, documents in ``stems`` order) then the dropped pairs of ``rejects.jsonl``."""
    from datakeg.dataset.jsonl import load_rows
    from datakeg.dataset.provenance import locate, read_sidecar, row_question
    from datakeg.dataset.records import ShapeError, detect_shape, to_conversation
    from datakeg.dataset.splits import SPLITS

    out = Path(out)
    sections: dict[str, list] = {}
    for split in SPLITS:
        for stem in stems:
            path = out / f"{stem}_{split}.jsonl"  # writers.per_file_path
            if not path.exists():
                continue
            if stem not in sidecars:
                sidecars[stem] = read_sidecar(out, stem)
            side = sidecars[stem]
            file = (side or {}).get("file") or stem
            chunks = (side or {}).get("chunks") or []
            for index, (_, value, raw) in enumerate(load_rows(path)):
                question = row_question(raw)
                turns = None
                try:
                    conv = to_conversation(value, detect_shape(value)) if question is not None else None
                    answer = conv.first_pair().answer if conv is not None else ""
                    if conv is not None and conv.multi_turn:
                        turns = [dict(m) for m in conv.turns[2:]]
                except (ShapeError, KeyError, TypeError, ValueError, StopIteration, AttributeError):
                    answer = ""
                if question is None:
                    question = raw
                chunk = locate(side, split, index, question)
                section = chunks[chunk].get("section") if chunk is not None and 0 <= chunk < len(chunks) else None
                yield Item(pair_id(split, file, question), split, file, "row", question, answer, chunk, section,
                           stem, index, turns=turns), raw
    for stem, side in sidecars.items():
        if side:
            sections[side.get("file")] = side.get("chunks") or []
    rejects = out / "rejects.jsonl"  # writers.REJECTS
    if rejects.exists():
        for _, value, err in read_rows(rejects):
            if err or not isinstance(value, dict) or value.get("kind") != "dropped_pair":
                continue
            q, a, split = value.get("question"), value.get("answer"), value.get("split")
            if not isinstance(q, str) or not isinstance(a, str) or split not in SPLITS:
                continue
            file, chunk = str(value.get("source") or ""), value.get("chunk")
            chunks = sections.get(file) or []
            section = chunks[chunk].get("section") if isinstance(chunk, int) and 0 <= chunk < len(chunks) else None
            yield Item(pair_id(split, file, q, "reject"), split, file, "reject", q, a, chunk if isinstance(chunk, int) else None,
                       section, reason=value.get("reason"), similar_question=value.get("similar_question")), None


def apply(out: Path, stems: list[str]) -> tuple[dict[str, list[tuple]], dict[str, int]]:
    """The merged rows with the review decisions applied, per split, as
    (stem, index in the stem's per-file output or None, raw line, pair id, chunk), and the
    counts of what was applied (:func:`summary` plus ``applied_rejected``, ``applied_edited``,
    ``applied_restored`` and ``unmatched``: decisions whose pair is no longer in OUT)."""
    from datakeg.dataset.splits import SPLITS

    recs = states(out)
    sidecars: dict[str, dict | None] = {}
    merged: dict[str, list[tuple]] = {split: [] for split in SPLITS}
    restored: dict[tuple[str, str], list[Item]] = {}
    like: dict[str, dict] = {}
    counts = {"applied_rejected": 0, "applied_edited": 0, "applied_restored": 0}
    seen = set()
    all_items = list(items(out, stems, sidecars))
    for item, raw in all_items:
        if item.origin == "reject":
            state = recs.get(item.pair)
            if state is not None and item.pair not in seen and included(state, "reject"):
                restored.setdefault((item.split, item.file), []).append(item)
            seen.add(item.pair)
            continue
        if item.file not in like:
            like[item.file] = json.loads(raw)
    last = {(it.split, it.file): k for k, (it, _) in enumerate(all_items) if it.origin == "row"}
    for k, (item, raw) in enumerate(all_items):
        if item.origin != "row":
            continue
        seen.add(item.pair)
        state = recs.get(item.pair)
        if state is not None and not included(state, "row"):
            counts["applied_rejected"] += 1
            continue
        if state is not None and (state.get("question") is not None or state.get("answer") is not None):
            raw = dumps_line(edit_row(json.loads(raw), state.get("question"), state.get("answer")))
            counts["applied_edited"] += 1
        merged[item.split].append((item.stem, item.index, raw, item.pair, item.chunk))
        nxt = restored.pop((item.split, item.file), None) if last[(item.split, item.file)] == k else None
        for r in nxt or []:
            merged[item.split].append(_restored_row(out, r, recs[r.pair], like.get(r.file), item.stem))
            counts["applied_restored"] += 1
    for (split, _), rest in restored.items():  # a document with no row left in that split
        stem = next((s for s, side in sidecars.items() if side and side.get("file") == rest[0].file), None)
        if stem is None:
            continue
        for r in rest:
            merged[split].append(_restored_row(out, r, recs[r.pair], like.get(r.file), stem))
            counts["applied_restored"] += 1
    counts.update(summary(out, recs))
    counts["unmatched"] = sum(1 for p in recs if p not in seen)
    return merged, counts


def _restored_row(out: Path, item: Item, state: dict, like: dict | None, stem: str) -> tuple:
    q = state.get("question") if state.get("question") is not None else item.question
    a = state.get("answer") if state.get("answer") is not None else item.answer
    return stem, None, dumps_line(new_row(out, like, q, a)), item.pair, item.chunk


def unapplied(out: Path) -> int:
    """Decisions journaled after the last merge applied the journal (0 when all are applied): the
    manifest's ``"review"`` counts the decisions that merge saw."""
    lines = len(read(out))
    if not lines:
        return 0
    try:
        applied = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8")).get("review") or {}
    except (OSError, ValueError, AttributeError):
        applied = {}
    return max(0, lines - int(applied.get("decisions") or 0))


def describe(out: Path) -> str | None:
    """One line on OUT's review decisions for ``validate`` and ``convert``, or None without any."""
    if not journal_path(out).exists():
        return None
    s = summary(out)
    line = (f"review: {s['reviewed']} pair(s) reviewed: {s['kept']} kept, {s['edited']} edited, "
            f"{s['rejected']} rejected, {s['restored']} restored")
    late = unapplied(out)
    if late:
        line += (f"; {late} decision(s) made after the last merge are not in train/valid/test.jsonl yet: "
                 f"run `datakeg merge {out}` first")
    else:
        line += "; all applied to train/valid/test.jsonl"
    return line
