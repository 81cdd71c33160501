"""The generate run: a plan, a provider and callbacks in; per-file JSONL, merged files,
``rejects.jsonl`` and ``manifest.json`` out. Pure core: it never prints.

Stages: :mod:`datakeg.generation.planning` (chunks and targets), :mod:`datakeg.generation.rounds` (per document: split
rounds, gates, backfill), :mod:`datakeg.generation.calls` (one model call: journal, budget, accounting),
then the dataset-wide leakage audit with backfill, :mod:`datakeg.generation.manifest` and the merge.

Consistency of OUT: when a run starts, the manifest says ``running`` and the merged files of the
previous run are removed; each document's per-file outputs are written when it finishes; the
merged files are written from the final per-file outputs, and only then the manifest says
``complete``. After any stop, OUT never holds merged files or a manifest that describe another
state than its per-file files.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from datakeg.curation.taught import manifest_entry, taught_share
from datakeg.dataset.provenance import write_sidecar as write_provenance
from datakeg.dataset.records import Pair, Reject, to_row
from datakeg.dataset.splits import SPLITS
from datakeg.dataset.writers import (
    MANIFEST,
    REJECTS,
    atomic_write_json,
    atomic_write_jsonl,
    merge,
    per_file_path,
)
from datakeg.errors import BudgetExhausted, DatakegError
from datakeg.generation import manifest as manifest_mod
from datakeg.generation.callbacks import Callbacks, RecordingCallbacks
from datakeg.generation.calls import Caller, Limits, RunStats
from datakeg.generation.journal import Journal
from datakeg.generation.planning import Plan
from datakeg.generation.rounds import DocResult, DocumentRunner, turn_questions
from datakeg.generation.workers import PriorityPool
from datakeg.providers.base import Provider
from datakeg.settings import Settings

READY_SHARE, READY_MAX = 1.0, 32  # chunk workers beyond the request slots: a share of them, at most this many
LEAKAGE_ROUNDS = 3  # audit -> backfill -> audit ... at most this many times
MANIFEST_EVERY = 5.0  # seconds between manifest updates while documents finish
STOP_GRACE = 10.0  # seconds a stopped run waits for requests in flight before it exits


@dataclass
class RunResult:
    manifest: dict
    stats: RunStats


class Generator:
    """Runs a plan against a provider and writes OUT (the caller holds OUT's lock)."""

    def __init__(self, provider: Provider | list[Provider], settings: Settings, out: Path,
                 callbacks: Callbacks | None = None, concurrency: int = 1, limits: Limits | None = None,
                 judge: Provider | None = None, semantic=None, task=None, refill: bool = False):
        """``provider``: one provider, or one per endpoint (same model); ``concurrency`` is per endpoint;
        ``semantic``: a :class:`datakeg.curation.semantic.SemanticModel` for ``--semantic-dedupe``;
        ``refill``: pairs the review rejected are replaced (see :meth:`_refill_rejected`)."""
        self.providers = provider if isinstance(provider, list) else [provider]
        self.provider = self.providers[0]
        self.settings = settings
        self.out = Path(out)
        # every warning shown is also recorded in the manifest
        self.cb = callbacks if isinstance(callbacks, RecordingCallbacks) else RecordingCallbacks(callbacks)
        self.concurrency = max(1, concurrency)
        self.journal = Journal(self.out)
        self.caller = Caller(self.providers, self.journal, limits or Limits(), self.concurrency, self.cb.on_request,
                             on_message=self.cb.on_message, wait_for_model=settings.wait_for_model)
        self.earlier_usage = manifest_mod.earlier_usage(self.out)  # what the runs before this one in OUT used
        self.runner = DocumentRunner(self.caller, settings, self.cb, judge, task)
        self.task = self.runner.task
        self.semantic = semantic
        self.refill = refill
        self._refilled_before = 0  # replacements the previous run in OUT made (--refill)
        try:
            prev = json.loads((self.out / MANIFEST).read_text(encoding="utf-8")).get("review") or {}
            self._refilled_before = int(prev.get("refill_removed") or 0)
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        self._refill_report: dict | None = None
        self.lock = threading.Lock()
        self._last_manifest = 0.0
        self._audit_changed: set[int] = set()  # documents the leakage audit changed

    @property
    def stats(self) -> RunStats:
        return self.caller.stats

    # -- files ------------------------------------------------------------------------------
    def _write_document(self, res: DocResult) -> None:
        s = self.settings
        sources: dict[str, list[tuple[str, int]]] = {}
        for split in SPLITS:
            pairs = []
            sources[split] = []
            for i, slot in enumerate(res.slots):
                for j, p in enumerate(slot[split].pairs):
                    pairs.append(p)
                    if split == "train":  # rewordings right after their original, with its answer
                        pairs += [Pair(q, p.answer, p.reasoning) for q in res.paraphrases.get((i, j), [])]
                    sources[split] += [(q.question, i) for q in pairs[len(sources[split]):]]
            rows = (to_row(p, s.format, s.reasoning_format, s.system_message) for p in pairs)
            atomic_write_jsonl(per_file_path(self.out, res.plan.output, split), rows)
        # where each row comes from (merge turns it into OUT/provenance.jsonl), with the rows it describes
        write_provenance(self.out, res.plan.output, res.plan.doc.relpath,
                         ((c.breadcrumb, c.text) for c in res.plan.chunks), sources)

    def _manifest(self, status, plan, results, source, started, audit=None, stop_reason=None) -> dict:
        return manifest_mod.build(status=status, plan=plan, results=results, stats=self.stats,
                                  provider_info=self.provider.describe(), settings=self.settings.shaping(),
                                  concurrency=self.concurrency, source=source, started=started, audit=audit,
                                  stop_reason=stop_reason, endpoints=[e.report() for e in self.caller.endpoints],
                                  warnings=self.cb.warnings, earlier_usage=self.earlier_usage, task=self.task)

    # -- the whole run ----------------------------------------------------------------------
    def run(self, plan: Plan, source: Path) -> RunResult:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        results: list[DocResult | None] = [None] * len(plan.docs)
        # from here on OUT describes this run: the previous merged and per-file files would describe
        # another (what they held is in the journal: a rerun replays it for free)
        for split in SPLITS:
            (self.out / f"{split}.jsonl").unlink(missing_ok=True)
            for dp in plan.docs:
                per_file_path(self.out, dp.output, split).unlink(missing_ok=True)
        atomic_write_json(self.out / MANIFEST, self._manifest("running", plan, results, source, started))
        self.cb.on_plan(plan)
        for sk in plan.skipped:
            self.cb.on_warning(f"skipped {sk.relpath}: {sk.reason}")
        for w in plan.warnings:
            self.cb.on_warning(w)
        slots = self.caller.concurrency  # request slots over all endpoints
        # chunk work runs longest chain of requests first (see DocumentRunner.priority); more chunk
        # workers than slots, so that a request is ready whenever a slot frees (while a worker checks
        # its reply and writes its next prompt, another sends); slots go to the most urgent first
        # (not with a judge: its requests have slots of their own, on the same server by default, and
        # together they must stay within --concurrency per server, as one worker per slot keeps them)
        extra = 0 if self.runner.judge is not None else min(math.ceil(READY_SHARE * slots), READY_MAX)
        chunk_pool = PriorityPool(slots + extra, "datakeg-chunk")
        # documents only orchestrate (their requests go through the chunk pool and the call slots),
        # so more of them in flight keeps every request slot busy while some wait between rounds
        # (never more threads than documents: starting one costs about 0.1 ms)
        doc_pool = PriorityPool(min(4 * slots, len(plan.docs)), "datakeg-doc")

        def one(k: int) -> None:
            res = self.runner.run(plan.docs[k], chunk_pool)
            with self.lock:  # files and manifest change together: a stop never sees one without the other
                self._write_document(res)
                results[k] = res
            for i, sp, got, want in res.short_chunks():
                self.cb.on_warning(f"{res.plan.doc.relpath} chunk {i} ({sp}): {got}/{want} pairs after "
                                   f"{res.slots[i][sp].calls} request(s); continuing with fewer (never padded)")
            for i, chunk in enumerate(res.plan.chunks):
                self.cb.on_chunk_done(res.plan, chunk, sum(len(res.slots[i][sp].pairs) for sp in SPLITS))
            self.cb.on_document_done(res.plan, res.delivered)
            with self.lock:
                if time.monotonic() - self._last_manifest >= MANIFEST_EVERY:
                    self._last_manifest = time.monotonic()
                    atomic_write_json(self.out / MANIFEST,
                                      self._manifest("running", plan, results, source, started))

        audited = self.settings.effective_leakage > 0 or self.semantic is not None
        if audited:
            from datakeg.curation.leakage import preload_libraries

            preload_libraries()  # while the requests are in flight, not after the last of them
        try:
            # documents start longest chain first too (more documents than orchestrating threads)
            for f in [doc_pool.submit(one, k, priority=self.runner.priority(plan.docs[k], "train"))
                      for k in range(len(plan.docs))]:
                f.result()
            # --refill: the review's rejected pairs go and their chunks ask again, before the audit
            # (so the replacements go through the 3-way leakage audit like every other pair)
            self._refill_report = self._refill_rejected(results, chunk_pool) if self.refill else None
            if not self.refill and self._refilled_before:
                self.cb.on_warning(f"the previous run in {self.out} replaced {self._refilled_before} pair(s) rejected "
                                   "in review (--refill); this run, without --refill, leaves them out and asks for "
                                   "no replacement: pass --refill to keep the replacements (replayed, no new cost)")
            audit = self._audit(results, chunk_pool) if audited else None
            self._paraphrase_report = self._paraphrase(results, chunk_pool) if self.settings.paraphrases else None
        except BaseException as exc:
            if isinstance(exc, DatakegError):
                reason = exc.message
            elif isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            self.caller.stop(exc if isinstance(exc, DatakegError) else BudgetExhausted(reason))

            def record_stop() -> None:  # OUT as it stands: files, rejects and manifest agree
                try:
                    with self.lock:
                        for k in sorted(self._audit_changed):
                            self._write_document(results[k])
                        atomic_write_jsonl(self.out / REJECTS, (r.to_dict() for r in self._rejects(results)))
                        atomic_write_json(self.out / MANIFEST, self._manifest("stopped", plan, results, source,
                                                                              started, stop_reason=reason))
                except OSError:
                    pass

            record_stop()  # first, so a second Ctrl+C or a SIGKILL after it still finds OUT described
            doc_pool.shutdown(wait=False, cancel_futures=True)
            chunk_pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + STOP_GRACE  # requests in flight may finish (and are journaled)
            doc_pool.join(max(0.0, deadline - time.monotonic()))
            chunk_pool.join(max(0.0, deadline - time.monotonic()))
            record_stop()
            self.journal.close()
            raise
        doc_pool.shutdown()
        chunk_pool.shutdown()
        self.journal.close()
        atomic_write_jsonl(self.out / REJECTS, (r.to_dict() for r in self._rejects(results)))
        merge(self.out)
        # a run that delivered nothing says so (and the CLI exits non-zero): "complete" would read as success
        nothing = not any(sum(r.delivered.values()) for r in results) and any(dp.total for dp in plan.docs)
        manifest = self._manifest("nothing_delivered" if nothing else "complete", plan, results, source, started,
                                  audit)
        from datakeg.dataset.review_journal import journal_path, summary

        if journal_path(self.out).exists():  # the review's decisions: merge applied them and counted them
            try:
                applied = json.loads((self.out / MANIFEST).read_text(encoding="utf-8")).get("review")
            except (OSError, ValueError, AttributeError):
                applied = None
            manifest["review"] = applied or summary(self.out)
        if self._refill_report is not None:
            manifest["review"] = {**(manifest.get("review") or {}), **self._refill_report}
        # how many valid/test questions a train pair of their chunk teaches (datakeg.curation.taught)
        manifest["taught"] = manifest_entry(taught_share(self.out))
        if self._paraphrase_report is not None:
            manifest["paraphrases"] = self._paraphrase_report
            for f, res in zip(manifest["files"], results):
                f["paraphrases"] = sum(len(v) for v in res.paraphrases.values())
        atomic_write_json(self.out / MANIFEST, manifest)
        shown = len(self.cb.warnings)
        self._write_card(manifest)
        if len(self.cb.warnings) > shown:  # the card's own warning, shown after the manifest was written
            manifest["warnings"] = list(self.cb.warnings)
            atomic_write_json(self.out / MANIFEST, manifest)
        return RunResult(manifest, self.stats)

    def _rejects(self, results: list[DocResult | None]) -> list[Reject]:
        return ([r for res in results if res is not None for r in res.rejects] + list(self._refill_rejects)
                + list(self._audit_rejects) + list(self._paraphrase_rejects))

    # -- --refill: replacements for the pairs the review rejected -------------------------------
    _refill_rejects: list[Reject] = []

    def _refill_rejected(self, results: list[DocResult], pool: PriorityPool) -> dict:
        """Pairs rejected in ``datakeg review`` (their identity: split, document, original question,
        see :mod:`datakeg.dataset.review_journal`) are removed from their chunk and split, which then
        asks again for that many pairs like the leakage audit's backfill: spares first, then requests
        told to avoid the rejected questions (pinned in the avoid list), whose new pairs are checked
        by the gates against the document's questions *and every rejected question of the document*
        (one near a rejected question is dropped as a duplicate), then the round's pass between
        chunks. Everything is deterministic, so the journal replays it on the next run: a second
        ``--refill`` asks for nothing new. Returns the manifest's ``review`` counts ``refill_removed``
        and ``refilled`` (replacements delivered)."""
        from datakeg.dataset.provenance import pair_id
        from datakeg.dataset.review_journal import states

        self._refill_rejects = []
        rejected = {pid for pid, st in states(self.out).items() if st.get("status") == "rejected"}
        removed: dict[tuple[int, int, str], list[str]] = {}
        if rejected:
            for k, res in enumerate(results):
                for i, slot in enumerate(res.slots):
                    for sp in SPLITS:
                        keep = []
                        for p in slot[sp].pairs:
                            if pair_id(sp, res.plan.doc.relpath, p.question) in rejected:
                                removed.setdefault((k, i, sp), []).append(p.question)
                                self._refill_rejects.append(Reject(
                                    "dropped_pair", reason="review_rejected", source=res.plan.doc.relpath,
                                    chunk=res.plan.chunks[i].index, split=sp, question=p.question,
                                    answer=p.answer))
                            else:
                                keep.append(p)
                        slot[sp].pairs = keep
        if not removed:
            return {"refill_removed": 0, "refilled": 0}
        before = {key: len(results[key[0]].slots[key[1]][key[2]].pairs) for key in removed}
        by_doc: dict[int, list[str]] = {}
        for (k, _, _), qs in sorted(removed.items()):
            by_doc.setdefault(k, []).extend(qs)

        def avoid(k: int, i: int, sp: str) -> list[str]:  # this slot's rejected questions first (pinned)
            own = removed.get((k, i, sp), [])
            return own + [q for q in by_doc[k] if q not in own]

        with self.lock:
            self._audit_changed.update(by_doc)  # a stop writes them as they stand
            for k in sorted(by_doc):
                self._write_document(results[k])
        for k, i, sp in sorted(removed):  # spares first (--spares): no request
            res = results[k]
            mine = [p.question for s2 in SPLITS for p in res.slots[i][s2].pairs]
            self.runner.promote(res, i, sp, self.runner.gate(self.runner.others(res, i, SPLITS) + mine
                                                             + avoid(k, i, sp)))
        snapshot = {(k, i): self.runner.others(results[k], i, SPLITS) for (k, i, _) in removed}
        start = max(res.chain for res in results)

        def refill_chunk(k: int, i: int, start=start) -> None:  # a chunk's splits in split order
            for sp in SPLITS:
                if (k, i, sp) in removed:
                    results[k].wait_for(i, sp, start)
                    self.runner.refill(results[k], i, sp, avoid(k, i, sp), self.settings.max_attempts,
                                       snapshot[(k, i)])
                    start = results[k].slots[i][sp].chain

        for f in [pool.submit(refill_chunk, k, i) for (k, i) in sorted({(k, i) for k, i, _ in removed})]:
            f.result()
        for k, sp in sorted({(k, sp) for k, _, sp in removed}):  # chunks that refilled side by side
            self.runner.reconcile(results[k], sp, pool, after=max(res.chain for res in results))
        with self.lock:
            for k in sorted(by_doc):
                self._write_document(results[k])
        refilled = sum(max(0, len(results[k].slots[i][sp].pairs) - before[(k, i, sp)]) for k, i, sp in removed)
        n = sum(len(v) for v in removed.values())
        self.cb.on_message(f"--refill: {n} pair(s) rejected in review removed, {refilled} replacement(s) generated")
        return {"refill_removed": n, "refilled": refilled}

    # -- paraphrased train questions ------------------------------------------------------
    _paraphrase_rejects: list[Reject] = []
    _paraphrase_report: dict | None = None

    def _paraphrase(self, results: list[DocResult], pool: PriorityPool) -> dict:
        """K rewordings per train question (see :mod:`datakeg.generation.paraphrase`), never near a valid or
        test question of the dataset. Batches run in parallel; results are used in batch order."""
        from collections import Counter

        from datakeg.curation.leakage import find_leaks
        from datakeg.curation.quality import normalize_question
        from datakeg.generation import paraphrase as para
        from datakeg.generation.prompts import excerpt_tag
        from datakeg.providers.base import ChatRequest

        k = self.settings.paraphrases
        jobs = [(d, i, start) for d, res in enumerate(results) for i, slot in enumerate(res.slots)
                for start in range(0, len(slot["train"].pairs), para.BATCH)]

        def ask(d: int, i: int, start: int):
            res = results[d]
            chunk = res.plan.chunks[i]
            qs = [p.question for p in res.slots[i]["train"].pairs[start:start + para.BATCH]]
            messages = para.build_messages(chunk_text=chunk.text, tag=excerpt_tag(chunk.text, *qs), questions=qs,
                                           k=k, language=res.plan.language)
            request = ChatRequest(messages, schema=para.SCHEMA, temperature=self.settings.temperature,
                                  max_tokens=100 + 40 * k * len(qs), seed=self.settings.seed,
                                  task={"kind": "paraphrase", "questions": qs, "k": k})
            return qs, self.caller.call(request, ["paraphrase", d, i, start], chunk=f"{res.plan.doc.relpath}#{i}")

        replies = [f.result() for f in [pool.submit(ask, *job) for job in jobs]]
        # they wait for every document, side by side (replayed ones take no time)
        self.stats.chain_after += 1 if any(not reply.replayed for _, reply in replies) else 0
        self._paraphrase_rejects = []
        dropped: Counter = Counter()
        taken = {d: {normalize_question(p.question) for s in res.slots for sp in SPLITS for p in s[sp].pairs}
                 for d, res in enumerate(results)}
        cands: list[tuple[int, int, int, str]] = []  # (doc, chunk, pair index, rewording)
        for (d, i, start), (qs, reply) in zip(jobs, replies):
            where = dict(source=results[d].plan.doc.relpath, chunk=i, split="train")
            if reply.text is None:
                dropped["request_failed"] += 1
                self._paraphrase_rejects.append(Reject("request_failed", error=f"paraphrases: {reply.error}", **where))
                continue
            got = para.parse(reply.text, len(qs))
            if not got:
                dropped["unparseable"] += 1
                self._paraphrase_rejects.append(Reject("unparseable_reply", error="no paraphrases found",
                                                       raw=reply.text, **where))
                continue
            for n, q in enumerate(qs):
                kept, left = para.accept(q, got.get(n, []), k, taken[d])
                cands += [(d, i, start + n, text) for text in kept]
                for text, reason in left:
                    dropped[reason] += 1
                    self._paraphrase_rejects.append(Reject("dropped_pair", reason=f"paraphrase_{reason}",
                                                           question=text, similar_question=q, **where))
        # A rewording must not come near a held-out question (valid/test, labelled "train" so they
        # are kept, against the rewordings labelled "valid"), nor repeat a train question of another
        # document or another document's rewording (all train questions first, then the rewordings,
        # each with its real document). Rewordings of one document may resemble their originals.
        threshold = self.settings.effective_leakage or 1.0
        held = [p.question for res in results for s in res.slots for sp in ("valid", "test") for p in s[sp].pairs]
        bad: dict[int, tuple[str, float, str]] = {}  # candidate -> (question it is near, score, reason)
        if cands:
            for lk in find_leaks(held + [c[3] for c in cands], ["train"] * len(held) + ["valid"] * len(cands),
                                 [0] * (len(held) + len(cands)), threshold, semantic=self.semantic):
                if lk.index >= len(held) and lk.other < len(held):
                    bad[lk.index - len(held)] = (held[lk.other], lk.score, "paraphrase_leakage")
        train = [(d, p.question) for d, res in enumerate(results) for s in res.slots for p in s["train"].pairs]
        ok = [n for n in range(len(cands)) if n not in bad]
        if ok:
            texts = [q for _, q in train] + [cands[n][3] for n in ok]
            for lk in find_leaks(texts, ["train"] * len(texts), [d for d, _ in train] + [cands[n][0] for n in ok],
                                 threshold, semantic=self.semantic):
                if lk.index >= len(train):
                    bad[ok[lk.index - len(train)]] = (texts[lk.other], lk.score, "paraphrase_repeat")
        for n, (d, i, j, text) in enumerate(cands):
            if n in bad:
                near, score, reason = bad[n]
                dropped["leakage" if reason == "paraphrase_leakage" else "repeat"] += 1
                self._paraphrase_rejects.append(Reject(
                    "dropped_pair", reason=reason, source=results[d].plan.doc.relpath, chunk=i, split="train",
                    question=text, similar_question=near, similarity=round(score, 3)))
                continue
            results[d].paraphrases.setdefault((i, j), []).append(text)
        with self.lock:
            for res in results:
                self._write_document(res)
        kept_total = sum(len(v) for res in results for v in res.paraphrases.values())
        return {"per_question": k, "added": kept_total, "requests": len(jobs), "dropped": dict(sorted(dropped.items()))}

    def _write_card(self, manifest: dict) -> None:
        """OUT/README.md, the dataset card that makes OUT loadable by ``datasets`` (never over a
        README.md datakeg did not write; see :mod:`datakeg.dataset.card`)."""
        from datakeg.dataset.card import write_card

        try:
            note = write_card(self.out, manifest)
        except OSError as exc:  # the dataset itself is complete; say so rather than fail the run
            note = f"the dataset card {self.out / 'README.md'} was not written: {exc.strerror or exc}"
        if note:
            self.cb.on_warning(note)

    # -- dataset-wide leakage audit with backfill -------------------------------------------
    _audit_rejects: list[Reject] = []

    def _audit(self, results: list[DocResult], pool: PriorityPool) -> dict:
        """Across all documents: valid vs train, test vs train and valid, and repeats inside a split
        across documents (the first is kept). Removed pairs are backfilled (the chunk asks again,
        told to avoid the removed question), then the audit runs again, up to LEAKAGE_ROUNDS times.
        With ``--semantic-dedupe``, sentence-embedding near-duplicates count too, inside a document's
        split as well ("duplicate")."""
        from datakeg.curation.leakage import find_leaks

        threshold = self.settings.effective_leakage
        self._audit_rejects = []
        removed_by_kind: dict[str, int] = {}
        semantic_by_kind: dict[str, int] = {}
        rounds = 0
        changed_docs: set[int] = set()
        for rounds in range(1, LEAKAGE_ROUNDS + 1):
            items = [(k, i, sp, j) for k, res in enumerate(results) for i, slot in enumerate(res.slots)
                     for sp in SPLITS for j in range(len(slot[sp].pairs))]
            # order: document, then split, then chunk and position (priority by split is find_leaks' job)
            items.sort(key=lambda t: (t[0], SPLITS.index(t[2]), t[1], t[3]))
            questions = [results[k].slots[i][sp].pairs[j].question for k, i, sp, j in items]
            leaks = find_leaks(questions, [t[2] for t in items], [t[0] for t in items], threshold,
                               semantic=self.semantic, duplicates=True)
            if not leaks:
                break
            drop: dict[tuple[int, int, str], set[int]] = {}
            avoid: dict[tuple[int, int, str], list[str]] = {}
            for leak in leaks:
                k, i, sp, j = items[leak.index]
                pair = results[k].slots[i][sp].pairs[j]
                ok, oi, osp, oj = items[leak.other]
                other_q = results[ok].slots[oi][osp].pairs[oj].question
                drop.setdefault((k, i, sp), set()).add(j)
                avoid.setdefault((k, i, sp), []).extend([pair.question, other_q])
                slot = results[k].slots[i][sp]
                reason = "leakage"
                if leak.method == "semantic":
                    reason = "semantic_duplicate" if leak.kind == "duplicate" else "semantic_leakage"
                    semantic_by_kind[leak.kind] = semantic_by_kind.get(leak.kind, 0) + 1
                slot.dropped[reason] += 1
                self._audit_rejects.append(Reject("dropped_pair", reason=reason, source=results[k].plan.doc.relpath,
                                                  chunk=i, split=sp, question=pair.question, answer=pair.answer,
                                                  similar_question=other_q, similarity=round(leak.score, 3)))
                removed_by_kind[leak.kind] = removed_by_kind.get(leak.kind, 0) + 1
            with self.lock:  # the files follow every change, so a stop finds them in agreement
                for (k, i, sp), js in drop.items():
                    slot = results[k].slots[i][sp]
                    slot.pairs = [p for j, p in enumerate(slot.pairs) if j not in js]
                    changed_docs.add(k)
                    self._audit_changed.add(k)
                for k in sorted({k for k, _, _ in drop}):
                    self._write_document(results[k])
            if rounds == LEAKAGE_ROUNDS:
                break
            # spares first (--spares): a removed pair is replaced from its chunk's reserve, checked
            # against the document like a refill, in a fixed order and with no request; the next
            # round audits them like every other pair
            promoted = set()
            for k, i, sp in sorted(drop):
                res = results[k]
                mine = turn_questions([p for s2 in SPLITS for p in res.slots[i][s2].pairs])
                if self.runner.promote(res, i, sp, self.runner.gate(self.runner.others(res, i, SPLITS, turns=True) + mine
                                                                    + avoid[(k, i, sp)])):
                    promoted.add(k)
            with self.lock:
                for k in sorted(promoted):
                    self._write_document(results[k])
            drop = {key: js for key, js in drop.items()
                    if len(results[key[0]].slots[key[1]][key[2]].pairs) < results[key[0]].plan.targets[key[1]][key[2]]}
            # backfill what is still missing: every chunk in parallel, each against a snapshot of its
            # document's questions taken before any of them asks, so the result does not depend on
            # timing (the splits of one chunk in split order, in one task: each reads the chunk's
            # other splits; each chunk's calls are numbered on its own)
            snapshot = {(k, i): (self.runner.others(results[k], i, SPLITS), self.runner.others(results[k], i, SPLITS, turns=True))
                        for (k, i, _) in drop}
            start = max(res.chain for res in results)  # the backfill waits for every document

            def refill_chunk(k: int, i: int, drop=drop, avoid=avoid, snapshot=snapshot, start=start) -> None:
                for sp in SPLITS:
                    if (k, i, sp) in drop:
                        results[k].wait_for(i, sp, start)
                        self.runner.refill(results[k], i, sp, avoid[(k, i, sp)], self.settings.max_attempts,
                                           *snapshot[(k, i)])
                        start = results[k].slots[i][sp].chain

            for f in [pool.submit(refill_chunk, k, i) for (k, i) in sorted({(k, i) for k, i, _ in drop})]:
                f.result()
            # chunks of one document refilled side by side may have written the same new question:
            # the round's deterministic pass in chunk order settles it, as after a split round
            for k, sp in sorted({(k, sp) for k, _, sp in drop}):  # one after the other
                self.runner.reconcile(results[k], sp, pool, after=max(res.chain for res in results))
            with self.lock:
                for k in sorted({k for k, _, _ in drop}):
                    self._write_document(results[k])
        for k in sorted(changed_docs):
            self._write_document(results[k])
        report = {"threshold": threshold, "removed": dict(sorted(removed_by_kind.items())), "rounds": rounds,
                  "pairs_checked": sum(sum(r.delivered.values()) for r in results)}
        if self.semantic is not None:  # what only the embeddings found (also counted in "removed")
            report["semantic"] = {**self.semantic.describe(), "removed": dict(sorted(semantic_by_kind.items()))}
        return report
