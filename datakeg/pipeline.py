"""The generate pipeline: documents -> chunks -> targets -> model calls -> gates -> JSONL.

Pure core: takes a provider and a :class:`Callbacks` object, never prints. The CLI wires it up.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakeg import __version__
from datakeg.chunking import DEFAULT_CHUNK_SIZE, Chunk, chunk_text
from datakeg.discovery import Document, Skipped, output_stems
from datakeg.errors import ConfigError, DatakegError, ProviderRequestError
from datakeg.journal import Journal, request_key
from datakeg.parsing import ParseError, pairs_schema, parse_pairs
from datakeg.prompts import PROMPT_VERSION, avoid_list, build_messages, detect_language
from datakeg.providers.base import ChatRequest, Completion, Provider
from datakeg.quality import Gate, Grounding, normalize_question
from datakeg.records import FORMATS, REASONING_FORMATS, Pair, to_row
from datakeg.targets import SPLITS, Ratios, plan_targets
from datakeg.writers import MANIFEST, REJECTS, atomic_write_json, atomic_write_jsonl, merge, per_file_path

TOKENS_PER_PAIR = 80  # rough completion tokens per pair, for estimates and max_tokens
CHARS_PER_TOKEN = 4


@dataclass
class Settings:
    """Everything that shapes the output. Recorded in the manifest (holds no secrets)."""

    format: str = "completion"
    reasoning_format: str = "separate"
    system_message: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    pairs_per_1k: float = 10.0
    ratios: Ratios = field(default_factory=Ratios)
    dedupe_threshold: float = 90.0
    grounding_threshold: float = 0.5
    max_attempts: int = 3
    batch_size: int = 15
    avoid_cap: int = 24
    language: str | None = None
    temperature: float = 0.7
    seed: int | None = None
    leakage_threshold: float = 0.9  # TF-IDF cosine; 0 switches the audit off

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown --format {self.format!r}", f"Choose one of: {', '.join(FORMATS)}.")
        if self.reasoning_format not in REASONING_FORMATS:
            raise ConfigError(f"unknown --reasoning-format {self.reasoning_format!r}",
                              f"Choose one of: {', '.join(REASONING_FORMATS)}.")
        if not 0 <= self.dedupe_threshold <= 100:
            raise ConfigError("--dedupe-threshold must be between 0 and 100 (100 = exact duplicates only).")
        if not 0 <= self.grounding_threshold <= 1:
            raise ConfigError("--grounding-threshold must be between 0 and 1 (0 switches the check off).")
        if self.pairs_per_1k <= 0:
            raise ConfigError("--pairs-per-1k must be greater than 0.")
        if self.chunk_size < 200:
            raise ConfigError("--chunk-size must be at least 200 characters.")
        if not 0 <= self.leakage_threshold <= 1:
            raise ConfigError("--leakage-threshold must be between 0 and 1 (0 switches the audit off).")
        if self.batch_size < 1 or self.max_attempts < 0:
            raise ConfigError("--batch-size must be >= 1 and --max-attempts >= 0.")

    @property
    def reasoning(self) -> bool:
        return self.format == "reasoning"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = asdict(self.ratios)
        return d


class Callbacks:
    """Progress hooks. Override what you need; every method is a no-op by default."""

    def on_plan(self, plan: Plan) -> None: ...
    def on_document_start(self, doc: DocPlan) -> None: ...
    def on_chunk_done(self, doc: DocPlan, chunk: Chunk, accepted: int) -> None: ...
    def on_request(self, prompt_tokens: int, completion_tokens: int) -> None: ...
    def on_pairs(self, accepted: int) -> None: ...
    def on_document_done(self, doc: DocPlan, delivered: dict[str, int]) -> None: ...
    def on_warning(self, message: str) -> None: ...


@dataclass
class DocPlan:
    doc: Document
    output: str  # stem of the per-file outputs
    chunks: list[Chunk]
    total: int
    targets: list[dict[str, int]]  # per chunk {split: n}
    language: str = "English"

    @property
    def by_split(self) -> dict[str, int]:
        return {s: sum(t[s] for t in self.targets) for s in SPLITS}


@dataclass
class Plan:
    docs: list[DocPlan]
    skipped: list[Skipped]

    @property
    def chunks(self) -> int:
        return sum(len(d.chunks) for d in self.docs)

    @property
    def pairs(self) -> int:
        return sum(d.total for d in self.docs)


def make_plan(docs: list[Document], skipped: list[Skipped], settings: Settings) -> Plan:
    settings.validate()
    stems = output_stems([d.relpath for d in docs])
    plans = []
    skipped = list(skipped)
    for doc in docs:
        chunks = chunk_text(doc.text, doc.kind, settings.chunk_size)
        if not chunks:
            skipped.append(Skipped(doc.relpath, "no text content (only front matter or markup)"))
            continue
        total, targets = plan_targets([len(c) for c in chunks], settings.pairs_per_1k, settings.ratios)
        language = settings.language or detect_language(doc.text)
        plans.append(DocPlan(doc, stems[doc.relpath], chunks, total, targets, language))
    return Plan(plans, skipped)


def estimate(plan: Plan, settings: Settings) -> dict:
    """Requests and tokens a run of ``plan`` would need (no model calls)."""
    per_file = []
    for dp in plan.docs:
        prompt_chars = 0
        requests = 0
        for chunk, target in zip(dp.chunks, dp.targets):
            done = 0
            for split in SPLITS:
                n = target[split]
                for k in _batches(n, settings.batch_size):
                    avoid = ["x" * 70] * min(settings.avoid_cap, done)
                    msgs = build_messages(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                          count=k, split=split, language="English", avoid=avoid,
                                          reasoning=settings.reasoning)
                    prompt_chars += sum(len(m["content"]) for m in msgs)
                    requests += 1
                    done += k
        per_file.append({
            "file": dp.doc.relpath, "chars": sum(len(c) for c in dp.chunks), "chunks": len(dp.chunks),
            "target": dp.by_split, "requests": requests,
            "prompt_tokens": prompt_chars // CHARS_PER_TOKEN,
            "completion_tokens": dp.total * TOKENS_PER_PAIR * (2 if settings.reasoning else 1),
        })
    totals = {k: sum(f[k] for f in per_file) for k in ("chars", "chunks", "requests", "prompt_tokens",
                                                        "completion_tokens")}
    totals["target"] = {s: sum(f["target"][s] for f in per_file) for s in SPLITS}
    return {"files": per_file, "totals": totals}


def _batches(n: int, size: int) -> list[int]:
    """Split n into the fewest near-equal batches of at most ``size``."""
    if n <= 0:
        return []
    k = math.ceil(n / size)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


@dataclass
class Limits:
    """Hard stops for a run (None = no limit). Replayed calls from the journal cost nothing."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None


class BudgetExhausted(DatakegError):
    exit_code = 5


@dataclass
class RunStats:
    requests: int = 0  # calls made to the model in this run
    replayed: int = 0  # calls answered from the journal
    failed_requests: int = 0
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    max_prompt_tokens: int = 0
    max_pairs_asked: int = 0
    dropped: Counter = field(default_factory=Counter)


@dataclass
class _Slot:
    """What one chunk collected for one split."""

    pairs: list[Pair] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    dropped: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)


class Generator:
    """Runs a plan against a provider and writes OUT.

    Per document, the splits run in rounds: every chunk's train requests, then every chunk's valid
    requests (told to avoid this chunk's questions and the most similar train questions of the
    whole document, which is complete by then), then test (avoiding train and valid). Inside a
    round the chunks of all documents run in parallel (``concurrency``); a deterministic pass in
    chunk order then drops near duplicates between chunks and asks again for what is missing. So
    the output is the same whatever the concurrency, and valid/test are always checked against
    every train question of the document.
    """

    def __init__(self, provider: Provider, settings: Settings, out: Path, callbacks: Callbacks | None = None,
                 concurrency: int = 1, limits: Limits | None = None):
        self.provider = provider
        self.settings = settings
        self.out = Path(out)
        self.cb = callbacks or Callbacks()
        self.concurrency = max(1, concurrency)
        self.limits = limits or Limits()
        self.stats = RunStats()
        self.lock = threading.Lock()
        self.calls = threading.Semaphore(self.concurrency)
        self.journal = Journal(self.out)
        self.schema = pairs_schema(settings.reasoning)
        self.rejects: list[dict] = []
        self.stopped: BaseException | None = None

    # -- one model call -------------------------------------------------------------------
    def _budget_check(self) -> None:
        st, lim = self.stats, self.limits
        reason = None
        if lim.max_requests is not None and st.requests >= lim.max_requests:
            reason = f"--max-requests {lim.max_requests}"
        elif lim.max_tokens is not None and st.prompt_tokens + st.completion_tokens >= lim.max_tokens:
            reason = f"--max-tokens {lim.max_tokens}"
        elif lim.max_cost is not None and st.cost >= lim.max_cost:
            reason = f"--max-cost {lim.max_cost}"
        if reason:
            raise BudgetExhausted(
                f"stopped at {reason}: {st.requests} requests, {st.prompt_tokens + st.completion_tokens:,} tokens"
                + (f", ${st.cost:.4f}" if st.cost else "") + " used in this run.",
                "Everything finished so far is saved. Rerun the same command with a higher limit to continue; "
                "finished requests are not repeated.",
            )

    def _ask(self, dp: DocPlan, chunk: Chunk, split: str, count: int, language: str, avoid: list[str],
             ordinal: int, slot: _Slot) -> list[Pair] | None:
        messages = build_messages(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                  count=count, split=split, language=language, avoid=avoid,
                                  reasoning=self.settings.reasoning)
        per_pair = TOKENS_PER_PAIR * (3 if self.settings.reasoning else 2)
        task = {"excerpt": chunk.text, "count": count, "split": split, "language": language, "avoid": avoid,
                "reasoning": self.settings.reasoning}
        request = ChatRequest(messages, schema=self.schema, temperature=self.settings.temperature,
                              max_tokens=200 + per_pair * count, seed=self.settings.seed, task=task)
        info = self.provider.describe()
        key = request_key(provider=info.get("provider"), model=info.get("model"), prompt=PROMPT_VERSION,
                          temperature=request.temperature, seed=request.seed, schema=request.schema,
                          messages=messages, ordinal=ordinal)
        where = {"source": dp.doc.relpath, "chunk": chunk.index, "split": split}
        slot.calls += 1
        entry = self.journal.get(key)
        if entry is not None:
            reply = Completion(entry["text"], entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0),
                               entry.get("cost"))
            with self.lock:
                self.stats.replayed += 1
        else:
            with self.calls:
                with self.lock:
                    if self.stopped:
                        raise self.stopped
                    self._budget_check()
                    self.stats.requests += 1
                    self.stats.max_pairs_asked = max(self.stats.max_pairs_asked, count)
                try:
                    reply = self.provider.complete(request)
                except ProviderRequestError as exc:
                    slot.errors += 1
                    with self.lock:
                        self.stats.failed_requests += 1
                    slot.rejects.append({"kind": "request_failed", **where, "error": exc.message})
                    self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): request failed: {exc.message}")
                    return None
            self.journal.put(key, text=reply.text, prompt_tokens=reply.prompt_tokens,
                             completion_tokens=reply.completion_tokens, cost=reply.cost)
            with self.lock:
                self.stats.prompt_tokens += reply.prompt_tokens
                self.stats.completion_tokens += reply.completion_tokens
                self.stats.max_prompt_tokens = max(self.stats.max_prompt_tokens, reply.prompt_tokens)
                self.stats.cost += reply.cost or 0.0
            self.cb.on_request(reply.prompt_tokens, reply.completion_tokens)
        try:
            return parse_pairs(reply.text)
        except ParseError as exc:
            with self.lock:
                self.stats.unparseable += 1
            slot.rejects.append({"kind": "unparseable_reply", **where, "error": str(exc), "raw": reply.text})
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): unparseable reply kept in {REJECTS}")
            return None

    # -- one chunk, one split -----------------------------------------------------------------
    def _fill(self, dp: DocPlan, chunk: Chunk, split: str, want: int, slot: _Slot, language: str,
              gate: Gate, mine: list[Pair], elsewhere: list[str], max_calls: int) -> None:
        """Ask until ``slot`` holds ``want`` pairs or ``max_calls`` more calls were made."""
        s = self.settings
        grounding = Grounding(chunk.text)
        made = 0
        while len(slot.pairs) < want and made < max_calls:
            missing = want - len(slot.pairs)
            count = _batches(missing, s.batch_size)[0]
            avoid = avoid_list(mine, elsewhere, chunk.text, s.avoid_cap)
            made += 1
            pairs = self._ask(dp, chunk, split, count, language, avoid, slot.calls, slot)
            if pairs is None:
                continue
            batch: list[str] = []
            kept = 0
            for pair in pairs:
                reason = gate.check(pair, grounding, batch) or ("over_count" if kept >= count else None)
                if reason:
                    slot.dropped[reason] += 1
                    slot.rejects.append({"kind": "dropped_pair", "reason": reason, "source": dp.doc.relpath,
                                         "chunk": chunk.index, "split": split, "question": pair.question,
                                         "answer": pair.answer})
                    continue
                norm = normalize_question(pair.question)
                batch.append(norm)
                gate.accept(norm)
                slot.pairs.append(pair)
                mine.append(pair)
                kept += 1
            self.cb.on_pairs(kept)

    def _gate(self, questions: list[str]) -> Gate:
        s = self.settings
        return Gate(dedupe_threshold=s.dedupe_threshold, grounding_threshold=s.grounding_threshold,
                    accepted=[normalize_question(q) for q in questions])

    # -- one document -------------------------------------------------------------------
    def run_document(self, dp: DocPlan, pool: ThreadPoolExecutor) -> dict:
        s = self.settings
        language = dp.language
        n = len(dp.chunks)
        slots = [{split: _Slot() for split in SPLITS} for _ in range(n)]
        self.cb.on_document_start(dp)

        def own(i: int, upto: str) -> list[Pair]:
            return [p for sp in SPLITS[:SPLITS.index(upto) + 1] for p in slots[i][sp].pairs]

        def others(i: int, splits: tuple[str, ...]) -> list[str]:
            return [p.question for j in range(n) if j != i for sp in splits for p in slots[j][sp].pairs]

        for r, split in enumerate(SPLITS):
            earlier = SPLITS[:r]

            def work(i: int, split: str = split, earlier: tuple = earlier) -> None:
                want = dp.targets[i][split]
                if want == 0:
                    return
                mine = own(i, earlier[-1]) if earlier else []
                # checked against every question of the earlier splits (final by now) and this chunk's
                gate = self._gate(others(i, earlier) + [p.question for p in mine])
                planned = len(_batches(want, s.batch_size))
                self._fill(dp, dp.chunks[i], split, want, slots[i][split], language, gate, list(mine),
                           others(i, earlier), planned + s.max_attempts)

            # biggest jobs first, so the round's tail is short (the order of results does not matter)
            order = sorted(range(n), key=lambda i: -dp.targets[i][split])
            futures = [pool.submit(work, i) for i in order]
            for f in futures:
                f.result()
            # Deterministic pass in chunk order: near duplicates between chunks of this round go,
            # then the chunks that lost pairs ask again (sequentially, so the result is fixed).
            kept_norms: list[str] = []
            gate = self._gate(others(-1, earlier))
            for i in range(n):
                slot = slots[i][split]
                survivors = []
                for p in slot.pairs:
                    norm = normalize_question(p.question)
                    if gate.is_duplicate(norm, kept_norms):
                        slot.dropped["duplicate"] += 1
                        slot.rejects.append({"kind": "dropped_pair", "reason": "duplicate", "source": dp.doc.relpath,
                                             "chunk": i, "split": split, "question": p.question, "answer": p.answer})
                        continue
                    kept_norms.append(norm)
                    survivors.append(p)
                if len(survivors) < len(slot.pairs):
                    slot.pairs = survivors
                    doc_questions = others(i, earlier + (split,)) + [p.question for p in own(i, split)]
                    self._fill(dp, dp.chunks[i], split, dp.targets[i][split], slot, language,
                               self._gate(doc_questions), own(i, split), others(i, earlier + (split,)),
                               s.max_attempts)
                    kept_norms.extend(normalize_question(p.question) for p in slot.pairs[len(survivors):])

        chunk_reports = []
        dropped: Counter = Counter()
        for i, chunk in enumerate(dp.chunks):
            delivered = {sp: len(slots[i][sp].pairs) for sp in SPLITS}
            errors = sum(slots[i][sp].errors for sp in SPLITS)
            for sp in SPLITS:
                dropped.update(slots[i][sp].dropped)
                want = dp.targets[i][sp]
                if delivered[sp] < want:
                    self.cb.on_warning(
                        f"{dp.doc.relpath} chunk {i} ({sp}): {delivered[sp]}/{want} pairs after "
                        f"{slots[i][sp].calls} request(s); continuing with fewer (never padded)")
            chunk_reports.append({"index": i, "breadcrumb": chunk.breadcrumb, "chars": len(chunk),
                                  "target": dict(dp.targets[i]), "delivered": delivered, "request_errors": errors})
            self.cb.on_chunk_done(dp, chunk, sum(delivered.values()))
        with self.lock:
            self.stats.dropped.update(dropped)
        pairs = {sp: [p for i in range(n) for p in slots[i][sp].pairs] for sp in SPLITS}
        self._write_document(dp, pairs)
        delivered_doc = {sp: len(pairs[sp]) for sp in SPLITS}
        self.cb.on_document_done(dp, delivered_doc)
        return {
            "path": dp.doc.relpath, "output": dp.output, "chars": sum(len(c) for c in dp.chunks),
            "encoding": dp.doc.encoding, "language": language, "chunks": chunk_reports,
            "target": dp.by_split, "delivered": delivered_doc,
            "shortfall": {sp: dp.by_split[sp] - delivered_doc[sp] for sp in SPLITS},
            "dropped": dict(dropped), "_pairs": pairs,
            "_rejects": [r for sp in SPLITS for i in range(n) for r in slots[i][sp].rejects],
        }

    def _write_document(self, dp: DocPlan, pairs: dict[str, list[Pair]]) -> None:
        s = self.settings
        for split in SPLITS:
            rows = (to_row(p, s.format, s.reasoning_format, s.system_message) for p in pairs[split])
            atomic_write_jsonl(per_file_path(self.out, dp.output, split), rows)

    # -- the whole run ------------------------------------------------------------------
    def run(self, plan: Plan, source: Path) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        self.cb.on_plan(plan)
        for sk in plan.skipped:
            self.cb.on_warning(f"skipped {sk.relpath}: {sk.reason}")
        files: list[dict | None] = [None] * len(plan.docs)
        chunk_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="datakeg-chunk")
        # documents only orchestrate (their requests go through the chunk pool and the semaphore), so
        # more of them in flight keeps every request slot busy while some wait between rounds
        doc_pool = ThreadPoolExecutor(4 * self.concurrency, thread_name_prefix="datakeg-doc")
        try:
            futures = {doc_pool.submit(self.run_document, dp, chunk_pool): k for k, dp in enumerate(plan.docs)}
            for fut, k in futures.items():
                files[k] = fut.result()
        except BaseException as exc:
            with self.lock:
                self.stopped = exc if isinstance(exc, DatakegError) else BudgetExhausted("interrupted")
            doc_pool.shutdown(wait=True, cancel_futures=True)
            chunk_pool.shutdown(wait=True, cancel_futures=True)
            self.journal.close()
            raise
        doc_pool.shutdown()
        chunk_pool.shutdown()
        self.journal.close()
        self.rejects = [r for f in files for r in f.pop("_rejects")]  # in document order, whatever finished first
        audit = self._audit(plan, files) if self.settings.leakage_threshold > 0 else None
        atomic_write_jsonl(self.out / REJECTS, self.rejects)
        for f in files:
            f.pop("_pairs")
        manifest = self._manifest(plan, files, source, time.time() - started, audit)
        atomic_write_json(self.out / MANIFEST, manifest)
        merge(self.out)
        return manifest

    def _audit(self, plan: Plan, files: list[dict]) -> dict:
        """TF-IDF leakage audit over the whole dataset: valid/test pairs too close to any train
        question (of any document) are removed."""
        from datakeg.audit import leaking

        train = [p.question for f in files for p in f["_pairs"]["train"]]
        removed = Counter()
        for split in ("valid", "test"):
            flat = [(k, i) for k, f in enumerate(files) for i in range(len(f["_pairs"][split]))]
            questions = [files[k]["_pairs"][split][i].question for k, i in flat]
            hits = leaking(train, questions, self.settings.leakage_threshold)
            drop: dict[int, set[int]] = {}
            for idx, score, t in hits:
                k, i = flat[idx]
                drop.setdefault(k, set()).add(i)
                p = files[k]["_pairs"][split][i]
                self.rejects.append({"kind": "dropped_pair", "reason": "leakage", "source": files[k]["path"],
                                     "split": split, "question": p.question, "answer": p.answer,
                                     "similar_train_question": train[t], "similarity": round(score, 3)})
            for k, idxs in drop.items():
                f = files[k]
                f["_pairs"][split] = [p for i, p in enumerate(f["_pairs"][split]) if i not in idxs]
                f["delivered"][split] = len(f["_pairs"][split])
                f["shortfall"][split] = f["target"][split] - f["delivered"][split]
                f["dropped"]["leakage"] = f["dropped"].get("leakage", 0) + len(idxs)
                removed[split] += len(idxs)
        for k in {k for k, f in enumerate(files) if f["dropped"].get("leakage")}:
            self._write_document(plan.docs[k], files[k]["_pairs"])
        if removed:
            self.stats.dropped["leakage"] += sum(removed.values())
        return {"threshold": self.settings.leakage_threshold, "removed": dict(removed)}

    def _manifest(self, plan: Plan, files: list[dict], source: Path, seconds: float, audit: dict | None) -> dict:
        st = self.stats
        target = {s: sum(f["target"][s] for f in files) for s in SPLITS}
        delivered = {s: sum(f["delivered"][s] for f in files) for s in SPLITS}
        short_by_errors = sum(1 for f in files for c in f["chunks"]
                              if c["request_errors"] and any(c["delivered"][s] < c["target"][s] for s in SPLITS))
        return {
            "datakeg_version": __version__,
            "prompt_version": PROMPT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(source),
            **self.provider.describe(),
            "settings": self.settings.to_dict(),
            "concurrency": self.concurrency,
            "totals": {
                "files": len(files), "chunks": sum(len(f["chunks"]) for f in files),
                "target": target, "delivered": delivered,
                "shortfall": {s: target[s] - delivered[s] for s in SPLITS},
                "dropped": dict(sorted(st.dropped.items())),
                "requests": st.requests, "replayed_from_journal": st.replayed,
                "failed_requests": st.failed_requests, "unparseable_replies": st.unparseable,
                "chunks_short_because_of_errors": short_by_errors,
                "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
                "max_prompt_tokens": st.max_prompt_tokens, "max_pairs_asked": st.max_pairs_asked,
                "cost_usd": round(st.cost, 6) if st.cost else None,
                "seconds": round(seconds, 1),
            },
            "leakage_audit": audit,
            "skipped": [{"path": s.relpath, "reason": s.reason} for s in plan.skipped],
            "files": files,
        }
