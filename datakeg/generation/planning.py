"""What a run will ask for: documents -> chunks -> targets per chunk and split, and the
requests and tokens that takes (``--dry-run``). No model calls, no files written."""

from __future__ import annotations

import math
from dataclasses import dataclass

from datakeg.dataset.splits import SPLITS
from datakeg.generation.prompts import build_messages
from datakeg.generation.targets import plan_dataset
from datakeg.settings import Settings
from datakeg.sources.chunking import Chunk, chunk_text
from datakeg.sources.discovery import Document, Skipped, output_stems
from datakeg.sources.language import detect_language

TOKENS_PER_PAIR = 80  # rough completion tokens per pair, for estimates and max_tokens
CHARS_PER_TOKEN = 4


@dataclass
class DocPlan:
    doc: Document
    output: str  # stem of the per-file outputs
    chunks: list[Chunk]
    total: int
    targets: list[dict[str, int]]  # per chunk {split: n}
    language: str = "English"
    # the kinds of question each chunk's pairs are to be, per split (a task with [kinds]; see deal_kinds)
    kinds: list[dict[str, list[str]]] | None = None
    first_chunk: int = 0  # chunks of the documents before this one (audiences rotate over the dataset)

    @property
    def by_split(self) -> dict[str, int]:
        return {s: sum(t[s] for t in self.targets) for s in SPLITS}


@dataclass
class Plan:
    docs: list[DocPlan]
    skipped: list[Skipped]
    warnings: list[str]

    @property
    def chunks(self) -> int:
        return sum(len(d.chunks) for d in self.docs)

    @property
    def pairs(self) -> int:
        return sum(d.total for d in self.docs)

    @property
    def by_split(self) -> dict[str, int]:
        return {s: sum(d.by_split[s] for d in self.docs) for s in SPLITS}


def make_plan(docs: list[Document], skipped: list[Skipped], settings: Settings, task=None) -> Plan:
    """Chunks and targets for every document. The split shares hold for the whole dataset: a
    document too small for valid/test of its own contributes to whichever split the dataset
    needs (:func:`datakeg.generation.targets.plan_dataset`), and an empty split is warned about."""
    settings.validate()
    stems = output_stems([d.relpath for d in docs])
    skipped = list(skipped)
    chunked = []
    for doc in docs:
        chunks = chunk_text(doc.text, doc.kind, settings.chunk_size)
        if not chunks:
            skipped.append(Skipped(doc.relpath, "no text content (only front matter or markup)"))
            continue
        chunked.append((doc, chunks))
    targets, warnings = plan_dataset([[len(c) for c in chunks] for _, chunks in chunked], settings.pairs_per_1k,
                                     settings.ratios)
    plans = []
    for (doc, chunks), (total, per_chunk) in zip(chunked, targets):
        language = settings.language or detect_language(doc.text)
        if settings.min_per_section:
            total += raise_sections(chunks, per_chunk, settings.min_per_section)
        plans.append(DocPlan(doc, stems[doc.relpath], chunks, total, per_chunk, language,
                             first_chunk=sum(len(p.chunks) for p in plans)))
    if task is not None and task.kinds:
        deal_kinds(plans, task.mix)
    warnings = list(warnings)
    if settings.held_out == "taught":
        bare = sum(1 for dp in plans for t in dp.targets if t["train"] == 0 and t["valid"] + t["test"] > 0)
        if bare:
            warnings.append(f"--held-out taught: {bare} chunk(s) get valid/test pairs but no train pair, so their "
                            "held-out questions cannot be taught (they keep the usual prompt); raise --pairs-per-1k "
                            "or --chunk-size so that every chunk gets train pairs")
    return Plan(plans, skipped, warnings)


def deal_kinds(plans: list[DocPlan], mix: dict[str, float]) -> None:
    """Deal the task's kinds to every chunk's pairs, per split, over the whole dataset in document
    and chunk order: the n-th pair of a split gets the kind furthest below its share of n (largest
    remainder, ties to the kind listed first), so after any number of pairs every kind's count is
    within one of its weight's share, and each chunk asks for a contiguous run of that sequence."""
    names = list(mix)
    for split in SPLITS:
        dealt = dict.fromkeys(names, 0)
        n = 0
        for dp in plans:
            if dp.kinds is None:
                dp.kinds = [{sp: [] for sp in SPLITS} for _ in dp.chunks]
            for i, target in enumerate(dp.targets):
                for _ in range(target[split]):
                    n += 1
                    kind = max(names, key=lambda k: (mix[k] * n - dealt[k], -names.index(k)))
                    dealt[kind] += 1
                    dp.kinds[i][split].append(kind)


MIN_SECTION_CHARS = 200


def raise_sections(chunks: list[Chunk], per_chunk: list[dict[str, int]], n: int) -> int:
    """``--min-per-section``: every heading section (a chunk breadcrumb) of at least
    MIN_SECTION_CHARS characters gets ``n`` pairs or more; what is missing is added to the train
    target of its largest chunk. Returns the pairs added."""
    groups: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        groups.setdefault(chunk.breadcrumb, []).append(i)
    added = 0
    for idx in groups.values():
        if sum(len(chunks[i]) for i in idx) < MIN_SECTION_CHARS:
            continue
        missing = n - sum(sum(per_chunk[i].values()) for i in idx)
        if missing > 0:
            per_chunk[max(idx, key=lambda i: len(chunks[i]))]["train"] += missing
            added += missing
    return added


def batches(n: int, size: int) -> list[int]:
    """Split n into the fewest near-equal batches of at most ``size``."""
    if n <= 0:
        return []
    k = math.ceil(n / size)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def spare_pairs(target: int, share: float) -> int:
    """Spares (``--spares``) asked for a chunk's split of ``target`` pairs, room permitting."""
    return math.ceil(share * target - 1e-9) if target > 0 else 0


def estimate(plan: Plan, settings: Settings, task=None) -> dict:
    """Requests and tokens a run of ``plan`` would need (no model calls), per file and in total."""
    per_file = []
    for dp in plan.docs:
        prompt_chars = 0
        requests = 0
        spares = 0  # --spares: extra pairs asked in each chunk's last batch per split, where it has room
        for chunk, target in zip(dp.chunks, dp.targets):
            done = 0
            for split in SPLITS:
                planned = batches(target[split], settings.batch_size)
                if planned:
                    spares += min(settings.batch_size - planned[-1], spare_pairs(target[split], settings.spares))
                for k in planned:
                    avoid = ["x" * 70] * min(settings.avoid_cap, done)
                    msgs = build_messages(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                          count=k, split=split, language="English", avoid=avoid,
                                          reasoning=settings.reasoning, task=task)
                    prompt_chars += sum(len(m["content"]) for m in msgs)
                    requests += 1
                    done += k
        per_file.append({
            "file": dp.doc.relpath, "chars": sum(len(c) for c in dp.chunks), "chunks": len(dp.chunks),
            "target": dp.by_split, "requests": requests,
            "prompt_tokens": prompt_chars // CHARS_PER_TOKEN,
            "completion_tokens": (dp.total + spares) * TOKENS_PER_PAIR * (2 if settings.reasoning else 1)
            * (task.turns if task is not None else 1),
        })
    totals = {k: sum(f[k] for f in per_file) for k in ("chars", "chunks", "requests", "prompt_tokens",
                                                        "completion_tokens")}
    totals["target"] = {s: sum(f["target"][s] for f in per_file) for s in SPLITS}
    return {"files": per_file, "totals": totals}


__all__ = ["DocPlan", "Plan", "make_plan", "estimate", "batches", "spare_pairs"]
