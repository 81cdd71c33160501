"""What the review page shows and changes: every pair of an output folder (delivered rows and dropped
pairs) with its review state, filters and counts, and the decisions, checked and journaled.

No web framework here (:mod:`datakeg.review.server` serves this over HTTP): the model is usable
and testable on its own. Decisions go to :mod:`datakeg.dataset.review_journal` under OUT's lock
(``generate`` and ``review`` never write OUT at once); ``merge`` applies them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from datakeg.dataset import review_journal as rj
from datakeg.errors import DatakegError

_WORD = re.compile(r"\w+", re.UNICODE)


class Refused(DatakegError):
    """A decision that was not saved; ``status`` is the HTTP status the page gets."""

    def __init__(self, message: str, status: int = 422, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


@dataclass
class Entry:
    item: rj.Item
    state: dict | None
    history: list  # states before each decision not undone (undo pops one)
    search: str  # lowercase text searched by the filter

    @property
    def status(self) -> str:
        return (self.state or {}).get("status", "pending")

    @property
    def question(self) -> str:
        q = (self.state or {}).get("question")
        return self.item.question if q is None else q

    @property
    def answer(self) -> str:
        a = (self.state or {}).get("answer")
        return self.item.answer if a is None else a

    @property
    def edited(self) -> bool:
        return bool(self.state) and (self.state.get("question") is not None or self.state.get("answer") is not None)

    @property
    def included(self) -> bool:
        return rj.included(self.state, self.item.origin)

    @property
    def version(self) -> int:
        return (self.state or {}).get("version", 0)

    def brief(self) -> dict:
        it = self.item
        return {"id": it.pair, "split": it.split, "file": it.file, "section": it.section, "kind": it.origin,
                "reason": it.reason, "status": self.status, "edited": self.edited, "included": self.included,
                "question": self.question[:300], "note": bool((self.state or {}).get("note"))}


class ReviewModel:
    """Loads OUT once (and again when its files change) and answers the page's requests."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.lock = threading.RLock()
        self.entries: list[Entry] = []
        self.by_id: dict[str, Entry] = {}
        self.chunks: dict[str, list[dict]] = {}
        self.settings: dict = {}
        self._signature = None
        self.reload()

    # ------------------------------------------------------------------ loading
    def _files_signature(self):
        paths = [self.out / "manifest.json", self.out / "rejects.jsonl", self.out / "provenance.jsonl",
                 rj.journal_path(self.out)]
        sig = []
        for p in paths:
            try:
                st = p.stat()
                sig.append((st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def refresh(self) -> None:
        """Reload when another process changed OUT (a generate run, a merge)."""
        if self._files_signature() != self._signature:
            self.reload()

    def reload(self) -> None:
        from datakeg.dataset.writers import has_per_file_outputs, per_file_stems

        with self.lock:
            self._signature = self._files_signature()
            if not (self.out / "manifest.json").exists() and not has_per_file_outputs(self.out):
                raise DatakegError(f"{self.out} is not an output folder of `datakeg generate` (no manifest.json and "
                                   "no per-file outputs).", "Point it at the OUT of a generate run.")
            try:
                self.settings = json.loads((self.out / ".datakeg" / "run.json").read_text(encoding="utf-8")) \
                    .get("settings") or {}
            except (OSError, ValueError, AttributeError):
                self.settings = {}
            stems = per_file_stems(self.out)
            sidecars: dict = {}
            found = list(rj.items(self.out, stems, sidecars))
            self.chunks = {side.get("file") or stem: side.get("chunks") or []
                           for stem, side in sidecars.items() if side}
            histories: dict[str, list] = {}
            states: dict[str, dict] = {}
            for rec in rj.read(self.out):
                hist = histories.setdefault(rec["pair"], [])
                if rec.get("action") == "undo":
                    if hist:
                        hist.pop()
                else:
                    hist.append(states.get(rec["pair"]))
                states[rec["pair"]] = rec
            entries, by_id = [], {}
            for item, _ in found:
                if item.pair in by_id:
                    continue  # the same pair twice (one question twice in a document's split): one decision
                e = Entry(item, states.get(item.pair), histories.get(item.pair, []), "")
                e.search = f"{e.question}\n{e.answer}\n{item.section or ''}".lower()
                entries.append(e)
                by_id[item.pair] = e
            self.entries, self.by_id = entries, by_id

    # ------------------------------------------------------------------ reading
    def select(self, split: str = "", file: str = "", status: str = "", reason: str = "", kind: str = "",
               q: str = "") -> list[Entry]:
        """The entries the filters let through, in the list's order (``status``: a review status,
        ``edited``, or ``included``/``excluded`` from the merged files)."""
        words = q.lower().split()
        out = []
        for e in self.entries:
            it = e.item
            if split and it.split != split or file and it.file != file or kind and it.origin != kind:
                continue
            if reason and (it.reason or "") != reason:
                continue
            if status:
                if status == "edited":
                    if not e.edited:
                        continue
                elif status == "included":
                    if not e.included:
                        continue
                elif status == "excluded":
                    if e.included:
                        continue
                elif e.status != status:
                    continue
            if words and not all(w in e.search for w in words):
                continue
            out.append(e)
        return out

    def listing(self, offset: int = 0, limit: int = 200, **filters) -> dict:
        with self.lock:
            self.refresh()
            chosen = self.select(**filters)
            counts = {"total": len(self.entries), "shown": len(chosen)}
            for key in ("pending", "kept", "rejected", "restored"):
                counts[key] = 0
            counts["edited"] = 0
            for e in chosen:
                counts[e.status] += 1
                counts["edited"] += e.edited
            offset = max(0, offset)
            return {"counts": counts, "offset": offset, "ids": [e.item.pair for e in chosen],
                    "items": [e.brief() for e in chosen[offset:offset + max(0, min(limit, 1000))]]}

    def facets(self) -> dict:
        with self.lock:
            self.refresh()
            files = sorted({e.item.file for e in self.entries})
            reasons = sorted({e.item.reason for e in self.entries if e.item.reason})
            return {"files": files, "reasons": reasons, "summary": rj.summary(self.out)}

    def detail(self, pair: str) -> dict:
        with self.lock:
            self.refresh()
            e = self._entry(pair)
            it = e.item
            chunks = self.chunks.get(it.file) or []
            text = chunks[it.chunk].get("text") if it.chunk is not None and 0 <= it.chunk < len(chunks) else None
            return {**e.brief(), "question": e.question, "answer": e.answer,
                    "original_question": it.question, "original_answer": it.answer,
                    "note": (e.state or {}).get("note") or "", "version": e.version, "chunk": it.chunk,
                    "chunk_text": text, "support": support_spans(text or "", e.answer, e.question),
                    "similar_question": it.similar_question, "can_undo": bool(e.history), "turns": it.turns or []}

    def _entry(self, pair: str) -> Entry:
        e = self.by_id.get(pair) if isinstance(pair, str) else None
        if e is None:
            raise Refused("No such pair in this output folder (it may have been removed by a new generate run). "
                          "Reload the page.", 404)
        return e

    # ------------------------------------------------------------------ deciding
    def decide(self, pair: str, action: str, version, question: str | None = None, answer: str | None = None,
               note: str | None = None) -> dict:
        """Apply one decision and journal it. Refused (nothing saved) when ``version`` is not the
        pair's current one, when an edit fails the quality gates or the leakage audit, or when
        another datakeg process is writing OUT."""
        with self.lock:
            self.refresh()
            e = self._entry(pair)
            if action not in rj.ACTIONS:
                raise Refused(f"unknown action {action!r}", 400)
            if not isinstance(version, int) or version != e.version:
                raise Refused(f"This pair was changed elsewhere (another tab or window) after you opened it: it is at "
                              f"version {e.version}, your page had version {version}. Nothing was saved; the pair "
                              "is shown as it is now, decide again.", 409, version=e.version)
            state = dict(e.state or {"status": "pending", "question": None, "answer": None, "note": ""})
            if action == "undo":
                if not e.history:
                    raise Refused("Nothing to undo for this pair.", 409, version=e.version)
                prev = e.history[-1] or {"status": "pending", "question": None, "answer": None, "note": ""}
                state = {k: prev.get(k) for k in ("status", "question", "answer", "note")}
            elif action == "keep":
                state["status"] = "restored" if e.item.origin == "reject" else "kept"
            elif action == "restore":
                if e.item.origin != "reject":
                    raise Refused("Only a dropped pair can be restored; use keep for a delivered one.", 400)
                self._check_edit(e, e.question, e.answer, gates=False)  # a person may overrule a gate, not a leak
                state["status"] = "restored"
            elif action == "reject":
                state["status"] = "rejected"
            elif action == "note":
                state["note"] = (note or "")[:5000]
            elif action == "edit":
                q = e.question if question is None else str(question).strip()
                a = e.answer if answer is None else str(answer).strip()
                if not q or not a:
                    raise Refused("The question and the answer must not be empty.", 422)
                self._check_edit(e, q, a)
                state["question"] = None if q == e.item.question else q
                state["answer"] = None if a == e.item.answer else a
                if state["status"] == "pending" or (e.item.origin == "reject" and state["status"] != "restored"):
                    state["status"] = "restored" if e.item.origin == "reject" else "kept"
            it = e.item
            rec = {"pair": it.pair, "split": it.split, "file": it.file, "qhash": rj.qhash(it.question),
                   "origin": it.origin, "version": e.version + 1, "action": action, "status": state["status"],
                   "question": state.get("question"), "answer": state.get("answer"), "note": state.get("note") or "",
                   "original_question": it.question, "original_answer": it.answer, "chunk": it.chunk,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write([rec])
            self._record(e, rec, action)
            return self.detail(pair)

    def bulk(self, action: str, filters: dict, expected: int | None = None) -> dict:
        """Keep or reject every pair the filters select (one journal line per changed pair, one fsync)."""
        if action not in ("keep", "reject"):
            raise Refused("Bulk actions are keep and reject.", 400)
        with self.lock:
            self.refresh()
            chosen = self.select(**filters)
            if expected is not None and expected != len(chosen):
                raise Refused(f"The filtered set changed ({len(chosen)} pairs now, your page showed {expected}). "
                              "Nothing was changed; look again and repeat.", 409)
            recs, changed = [], []
            for e in chosen:
                it = e.item
                status = ("restored" if it.origin == "reject" else "kept") if action == "keep" else "rejected"
                if e.status == status:
                    continue
                if action == "keep" and it.origin == "reject":
                    continue  # a dropped pair is restored one at a time, after its check
                state = e.state or {}
                recs.append({"pair": it.pair, "split": it.split, "file": it.file, "qhash": rj.qhash(it.question),
                             "origin": it.origin, "version": e.version + 1, "action": action, "status": status,
                             "question": state.get("question"), "answer": state.get("answer"),
                             "note": state.get("note") or "", "original_question": it.question,
                             "original_answer": it.answer, "chunk": it.chunk,
                             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                changed.append(e)
            if recs:
                self._write(recs)
                for e, rec in zip(changed, recs):
                    self._record(e, rec, action)
            return {"changed": len(recs), "selected": len(chosen)}

    def _record(self, e: Entry, rec: dict, action: str) -> None:
        if action == "undo":
            e.history.pop()
        else:
            e.history.append(e.state)
        e.state = rec
        e.search = f"{e.question}\n{e.answer}\n{e.item.section or ''}".lower()

    def _write(self, recs: list[dict]) -> None:
        from datakeg.dataset.outdir import OutputLock
        from datakeg.errors import OutputBusy

        try:
            with OutputLock(self.out, "review"):
                path = rj.journal_path(self.out)
                path.parent.mkdir(parents=True, exist_ok=True)
                rj.append_many(self.out, recs)
        except OutputBusy as exc:
            raise Refused(f"Not saved: {exc.message} The review writes again once it has finished.", 423) from None
        self._signature = self._files_signature()

    def apply(self) -> dict:
        """Rebuild the merged files with the decisions applied (``datakeg merge``, under OUT's lock)."""
        from datakeg.curation.taught import refresh_taught
        from datakeg.dataset.card import write_card
        from datakeg.dataset.outdir import OutputLock
        from datakeg.dataset.writers import merge
        from datakeg.errors import OutputBusy

        with self.lock:
            try:
                with OutputLock(self.out, "review (merge)"):
                    counts = merge(self.out)
                    refresh_taught(self.out)  # the manifest's taught share, then the card, describe the new rows
                    write_card(self.out)
            except OutputBusy as exc:
                raise Refused(f"Not applied: {exc.message}", 423) from None
            self.reload()
            return {"rows": counts, "review": rj.summary(self.out)}

    # ------------------------------------------------------------------ the checks of an edit
    def _check_edit(self, e: Entry, question: str, answer: str, gates: bool = True) -> None:
        """The quality gates of generate and the leakage audit (train, valid, test), against every
        other pair that the merged files will hold."""
        from datakeg.curation.leakage import leaking
        from datakeg.curation.quality import Gate, grounding_for, normalize_question
        from datakeg.dataset.records import Pair

        s = self.settings
        gate = Gate(dedupe_threshold=float(s.get("dedupe_threshold") or 90.0),
                    grounding_threshold=0.0 if s.get("no_grounding") else float(
                        s.get("grounding_threshold") if s.get("grounding_threshold") is not None else 0.5))
        others = [o for o in self.entries if o is not e and o.included]
        for o in others:
            if o.item.file == e.item.file:
                gate.accept(normalize_question(o.question))
        chunks = self.chunks.get(e.item.file) or []
        text = chunks[e.item.chunk].get("text") if e.item.chunk is not None and 0 <= e.item.chunk < len(chunks) else None
        reason = gate.check(Pair(question, answer), grounding_for(text) if text else None, []) if gates else None
        if reason:
            raise Refused(f"Refused by the quality gate \"{reason}\": {_GATE_HELP.get(reason, '')}", 422, gate=reason)
        threshold = float(s.get("leakage_threshold") if s.get("leakage_threshold") is not None else 0.9)
        if threshold <= 0:
            return
        pool = [o for o in others if o.item.split != e.item.split or o.item.file != e.item.file]
        hits = leaking([o.question for o in pool], [question], threshold)
        if hits:
            _, score, k = hits[0]
            o = pool[k]
            kind = "repeats a pair of another document in" if o.item.split == e.item.split else "leaks into"
            raise Refused(f"Refused by the leakage audit: this {e.item.split} question {kind} the {o.item.split} split "
                          f"(cosine {score:.2f} >= {threshold:g} to \"{o.question[:160]}\", {o.item.file}). A model "
                          "tested on it would have seen it in training; reword it further.", 422, leak=o.item.split)


_GATE_HELP = {
    "too_short": "the question or the answer is too short.",
    "dangling": "the question leans on context the model will never see (\"this section\", \"the document\"...); "
                "name what it is about.",
    "echo": "the answer only repeats the question's words.",
    "duplicate": "the question (nearly) repeats another question of this document.",
    "ungrounded": "most of what the answer says is not in the source text beside it (or it states a number the "
                  "source does not hold).",
}


def support_spans(text: str, answer: str, question: str = "") -> list[list[int]]:
    """Character spans of ``text`` holding the answer's content words (the same words and
    5-letter prefixes the grounding gate matches), for the page's highlight."""
    from datakeg.curation.quality import STOPWORDS, content_units

    units = {u for u in content_units(answer) if not any("\u3000" <= ch <= "\u9fff" for ch in u)}
    prefixes = {u[:5] for u in units if len(u) >= 5}
    spans = []
    for m in _WORD.finditer(text):
        w = m.group(0).lower()
        if len(w) > 1 and (len(w) > 2 or w.isdigit()) and w not in STOPWORDS and (w in units or len(w) >= 5 and w[:5] in prefixes):
            spans.append([m.start(), m.end()])
    for u in content_units(answer):  # CJK bigrams: found as substrings
        if any("\u3000" <= ch <= "\u9fff" for ch in u):
            start = text.find(u)
            while start != -1:
                spans.append([start, start + len(u)])
                start = text.find(u, start + 1)
    spans.sort()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged
