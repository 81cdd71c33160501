"""The generate pipeline: documents -> chunks -> targets -> model calls -> gates -> JSONL.

Pure core: takes a provider and a :class:`Callbacks` object, never prints. The CLI wires it up.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakeg import __version__
from datakeg.chunking import DEFAULT_CHUNK_SIZE, Chunk, chunk_text
from datakeg.discovery import Document, Skipped, output_stems
from datakeg.errors import ConfigError, ProviderRequestError
from datakeg.parsing import ParseError, pairs_schema, parse_pairs
from datakeg.prompts import PROMPT_VERSION, avoid_list, build_messages, detect_language
from datakeg.providers.base import ChatRequest, Provider
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
    batch_size: int = 10
    avoid_cap: int = 30
    language: str | None = None
    temperature: float = 0.7
    seed: int | None = None

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

    @property
    def by_split(self) -> dict[str, int]:
        return {s: sum(t[s] for t in self.targets) for s in SPLITS}

    def requests(self, batch_size: int) -> int:
        return sum(math.ceil(t[s] / batch_size) for t in self.targets for s in SPLITS if t[s])


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
        plans.append(DocPlan(doc, stems[doc.relpath], chunks, total, targets))
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
class RunStats:
    requests: int = 0
    failed_requests: int = 0
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    max_prompt_tokens: int = 0
    dropped: Counter = field(default_factory=Counter)


class Generator:
    """Runs a plan against a provider and writes OUT."""

    def __init__(self, provider: Provider, settings: Settings, out: Path, callbacks: Callbacks | None = None):
        self.provider = provider
        self.settings = settings
        self.out = Path(out)
        self.cb = callbacks or Callbacks()
        self.stats = RunStats()
        self.rejects: list[dict] = []
        self.schema = pairs_schema(settings.reasoning)

    # -- one model call -------------------------------------------------------------------
    def _ask(self, dp: DocPlan, chunk: Chunk, split: str, count: int, language: str,
             avoid: list[str]) -> list[Pair] | None:
        messages = build_messages(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                  count=count, split=split, language=language, avoid=avoid,
                                  reasoning=self.settings.reasoning)
        per_pair = TOKENS_PER_PAIR * (3 if self.settings.reasoning else 2)
        task = {"excerpt": chunk.text, "count": count, "split": split, "language": language, "avoid": avoid,
                "reasoning": self.settings.reasoning}
        request = ChatRequest(messages, schema=self.schema, temperature=self.settings.temperature,
                              max_tokens=200 + per_pair * count, seed=self.settings.seed, task=task)
        where = {"source": dp.doc.relpath, "chunk": chunk.index, "split": split}
        self.stats.requests += 1
        try:
            reply = self.provider.complete(request)
        except ProviderRequestError as exc:
            self.stats.failed_requests += 1
            self.rejects.append({"kind": "request_failed", **where, "error": exc.message})
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): request failed: {exc.message}")
            return None
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        self.stats.max_prompt_tokens = max(self.stats.max_prompt_tokens, reply.prompt_tokens)
        if reply.cost:
            self.stats.cost += reply.cost
        self.cb.on_request(reply.prompt_tokens, reply.completion_tokens)
        try:
            return parse_pairs(reply.text)
        except ParseError as exc:
            self.stats.unparseable += 1
            self.rejects.append({"kind": "unparseable_reply", **where, "error": str(exc), "raw": reply.text})
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): unparseable reply kept in {REJECTS}")
            return None

    # -- one document -------------------------------------------------------------------
    def run_document(self, dp: DocPlan) -> dict:
        s = self.settings
        language = s.language or detect_language(dp.doc.text)
        gate = Gate(dedupe_threshold=s.dedupe_threshold, grounding_threshold=s.grounding_threshold)
        accepted: dict[str, list[Pair]] = {split: [] for split in SPLITS}
        all_questions: list[tuple[int, str]] = []  # (chunk index, question) in acceptance order
        chunk_reports = []
        dropped_doc: Counter = Counter()
        self.cb.on_document_start(dp)
        for chunk, target in zip(dp.chunks, dp.targets):
            grounding = Grounding(chunk.text)
            mine: list[Pair] = []
            delivered = {split: 0 for split in SPLITS}
            for split in SPLITS:
                want = target[split]
                if want == 0:
                    continue
                planned = len(_batches(want, s.batch_size))
                calls = 0
                while delivered[split] < want and calls < planned + s.max_attempts:
                    missing = want - delivered[split]
                    count = min(missing, _batches(missing, s.batch_size)[0])
                    elsewhere = [q for idx, q in all_questions if idx != chunk.index]
                    avoid = avoid_list(mine, elsewhere, chunk.text, s.avoid_cap)
                    calls += 1
                    pairs = self._ask(dp, chunk, split, count, language, avoid)
                    if pairs is None:
                        continue
                    batch: list[str] = []
                    kept = 0
                    for pair in pairs:
                        reason = gate.check(pair, grounding, batch) or ("over_count" if kept >= count else None)
                        if reason:
                            dropped_doc[reason] += 1
                            self.rejects.append({"kind": "dropped_pair", "reason": reason, "source": dp.doc.relpath,
                                                 "chunk": chunk.index, "split": split, "question": pair.question,
                                                 "answer": pair.answer})
                            continue
                        norm = normalize_question(pair.question)
                        batch.append(norm)
                        gate.accept(norm)
                        accepted[split].append(pair)
                        mine.append(pair)
                        all_questions.append((chunk.index, pair.question))
                        kept += 1
                    delivered[split] += kept
                    self.cb.on_pairs(kept)
                if delivered[split] < want:
                    self.cb.on_warning(
                        f"{dp.doc.relpath} chunk {chunk.index} ({split}): {delivered[split]}/{want} pairs "
                        f"after {calls} request(s); continuing with fewer (never padded)"
                    )
            chunk_reports.append({"index": chunk.index, "breadcrumb": chunk.breadcrumb, "chars": len(chunk),
                                  "target": dict(target), "delivered": delivered})
            self.cb.on_chunk_done(dp, chunk, sum(delivered.values()))
        self.stats.dropped.update(dropped_doc)
        for split in SPLITS:
            rows = (to_row(p, s.format, s.reasoning_format, s.system_message) for p in accepted[split])
            atomic_write_jsonl(per_file_path(self.out, dp.output, split), rows)
        delivered_doc = {split: len(accepted[split]) for split in SPLITS}
        self.cb.on_document_done(dp, delivered_doc)
        return {
            "path": dp.doc.relpath, "output": dp.output, "chars": sum(len(c) for c in dp.chunks),
            "encoding": dp.doc.encoding, "language": language, "chunks": chunk_reports,
            "target": dp.by_split, "delivered": delivered_doc,
            "shortfall": {sp: dp.by_split[sp] - delivered_doc[sp] for sp in SPLITS},
            "dropped": dict(dropped_doc),
        }

    # -- the whole run ------------------------------------------------------------------
    def run(self, plan: Plan, source: Path) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        self.cb.on_plan(plan)
        for sk in plan.skipped:
            self.cb.on_warning(f"skipped {sk.relpath}: {sk.reason}")
        files = []
        for dp in plan.docs:
            files.append(self.run_document(dp))
            atomic_write_jsonl(self.out / REJECTS, self.rejects)
        manifest = self._manifest(plan, files, source, time.time() - started)
        atomic_write_json(self.out / MANIFEST, manifest)
        merge(self.out)
        return manifest

    def _manifest(self, plan: Plan, files: list[dict], source: Path, seconds: float) -> dict:
        st = self.stats
        target = {s: sum(f["target"][s] for f in files) for s in SPLITS}
        delivered = {s: sum(f["delivered"][s] for f in files) for s in SPLITS}
        return {
            "datakeg_version": __version__,
            "prompt_version": PROMPT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(source),
            **self.provider.describe(),
            "settings": self.settings.to_dict(),
            "totals": {
                "files": len(files), "chunks": sum(len(f["chunks"]) for f in files),
                "target": target, "delivered": delivered,
                "shortfall": {s: target[s] - delivered[s] for s in SPLITS},
                "dropped": dict(sorted(st.dropped.items())),
                "requests": st.requests, "failed_requests": st.failed_requests,
                "unparseable_replies": st.unparseable,
                "prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens,
                "max_prompt_tokens": st.max_prompt_tokens,
                "cost_usd": round(st.cost, 6) if st.cost else None,
                "seconds": round(seconds, 1),
            },
            "skipped": [{"path": s.relpath, "reason": s.reason} for s in plan.skipped],
            "files": files,
        }
