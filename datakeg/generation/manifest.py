"""``manifest.json``: what was asked, delivered and dropped, and how the run went.

``status`` is ``running`` while a run is under way (per-file outputs of documents marked
``pending`` are not final), ``stopped`` after a budget stop, Ctrl+C or error (rerun to continue),
and ``complete`` once per-file outputs, merged files and rejects all describe the same final
state; ``nothing_delivered`` is a finished run that got no pair at all (every request failed or
no reply could be used). The manifest never holds a key.

``usage`` holds the requests, tokens and cost of this run and of every run in OUT so far
(``total``: a resumed run adds its own to what the manifest it found recorded).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from datakeg import __version__
from datakeg.curation.coverage import coverage
from datakeg.dataset.splits import SPLITS
from datakeg.generation.calls import RunStats
from datakeg.generation.planning import Plan
from datakeg.generation.prompts import PROMPT_VERSION
from datakeg.generation.rounds import DocResult


def file_entry(res: DocResult) -> dict:
    dp = res.plan
    delivered = res.delivered
    chunks = []
    for i, chunk in enumerate(dp.chunks):
        chunks.append({"index": i, "breadcrumb": chunk.breadcrumb, "chars": len(chunk),
                       "target": dict(dp.targets[i]),
                       "delivered": {sp: len(res.slots[i][sp].pairs) for sp in SPLITS},
                       "request_errors": sum(res.slots[i][sp].errors for sp in SPLITS)})
    return {
        "path": dp.doc.relpath, "output": dp.output, "status": "done", "chars": sum(len(c) for c in dp.chunks),
        "encoding": dp.doc.encoding, "language": dp.language, "chunks": chunks,
        "target": dp.by_split, "delivered": delivered,
        "shortfall": {sp: dp.by_split[sp] - delivered[sp] for sp in SPLITS},
        "dropped": dict(sorted(res.dropped.items())),
        **({"judge": _judge(res)} if _judge(res)["requests"] else {}),
    }


def _judge(res: DocResult) -> dict:
    slots = [s[sp] for s in res.slots for sp in SPLITS]
    return {"requests": sum(getattr(s, "judge_calls", 0) for s in slots),
            "pairs_scored": sum(getattr(s, "judged", 0) for s in slots),
            "dropped": sum(s.dropped.get("judge", 0) for s in slots),
            "unjudged": sum(s.dropped.get("unjudged", 0) for s in slots)}


USAGE_KEYS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def earlier_usage(out: Path) -> dict:
    """The usage of every earlier run in OUT, from the manifest there (zeros when there is none)."""
    import json

    total = dict.fromkeys(USAGE_KEYS, 0)
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return total
    if not isinstance(manifest, dict):
        return total
    usage = manifest.get("usage")
    found = usage.get("total") if isinstance(usage, dict) else manifest.get("totals")  # older manifests: one run
    if isinstance(found, dict):
        for k in USAGE_KEYS:
            v = found.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = v
    return total


def pending_entry(dp) -> dict:
    return {"path": dp.doc.relpath, "output": dp.output, "status": "pending", "target": dp.by_split}


def build(*, status: str, plan: Plan, results: list[DocResult | None], stats: RunStats, provider_info: dict,
          settings: dict, concurrency: int, source: Path, started: float, audit: dict | None,
          stop_reason: str | None = None, endpoints: list[dict] | None = None,
          warnings: list[str] | None = None, earlier_usage: dict | None = None, task=None) -> dict:
    """``warnings``: every warning the run showed (the plan's among them); the plan's alone when
    not given. ``task``: the run's task (name, hash, mix), recorded with the mix delivered."""
    files = [file_entry(r) if r is not None else pending_entry(dp) for dp, r in zip(plan.docs, results)]
    done = [f for f in files if f["status"] == "done"]
    target = {s: sum(dp.by_split[s] for dp in plan.docs) for s in SPLITS}
    delivered = {s: sum(f["delivered"][s] for f in done) for s in SPLITS}
    dropped = Counter()
    for r in results:
        if r is not None:
            dropped.update(r.dropped)
    short_by_errors = sum(1 for f in done for c in f["chunks"]
                          if c["request_errors"] and any(c["delivered"][s] < c["target"][s] for s in SPLITS))
    manifest = {
        "datakeg_version": __version__,
        "prompt_version": PROMPT_VERSION,
        "status": status,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(source),
        **provider_info,
        "settings": settings,
        **({"task": task.identity()} if task is not None else {}),
        "concurrency": concurrency,
        "totals": {
            "files": len(files), "files_done": len(done), "chunks": plan.chunks,
            "target": target, "delivered": delivered,
            "shortfall": {s: target[s] - delivered[s] for s in SPLITS},
            "dropped": dict(sorted(dropped.items())),
            "requests": stats.requests, "replayed_from_journal": stats.replayed,
            "failed_requests": stats.failed_requests, "unparseable_replies": stats.unparseable,
            "truncated_replies": stats.truncated,
            "chunks_short_because_of_errors": short_by_errors,
            # --spares: pairs that replaced removed ones without a request, and the ones left over
            "spares": {"used": sum(s[sp].spares_used for r in results if r is not None for s in r.slots for sp in SPLITS),
                       "unused": sum(len(s[sp].reserve) for r in results if r is not None for s in r.slots
                                     for sp in SPLITS)},
            "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "cached_prompt_tokens": stats.cached_tokens,
            "prompt_prefix_share": round(stats.prefix_chars / stats.prompt_chars, 3) if stats.prompt_chars else None,
            "max_prompt_tokens": stats.max_prompt_tokens, "max_pairs_asked": stats.max_pairs_asked,
            # the most requests that had to follow one another (each waited for the one before): at
            # latency L per request, no --concurrency makes the run shorter than this x L
            "request_chain": max((r.chain for r in results if r is not None), default=0) + stats.chain_after,
            "cost_usd": round(stats.cost, 6) if stats.cost else None,
            "seconds": round(time.time() - started, 1),
        },
        "usage": _usage(stats, earlier_usage),
        **({"judge": {k: sum(f.get("judge", {}).get(k, 0) for f in done)
                      for k in ("requests", "pairs_scored", "dropped", "unjudged")}}
           if any("judge" in f for f in done) else {}),
        "leakage_audit": audit,
        "coverage": coverage(results, task),
        "warnings": list(plan.warnings) if warnings is None else list(warnings),
        "skipped": [{"path": s.relpath, "reason": s.reason} for s in plan.skipped],
        "files": files,
    }
    if endpoints and len(endpoints) > 1:
        manifest["endpoints"] = endpoints
        manifest.pop("base_url", None)
    if stop_reason:
        manifest["stop_reason"] = stop_reason
    return manifest


def _usage(stats: RunStats, earlier: dict | None) -> dict:
    run = {"requests": stats.requests, "prompt_tokens": stats.prompt_tokens,
           "completion_tokens": stats.completion_tokens, "cost_usd": round(stats.cost, 6)}
    earlier = earlier or dict.fromkeys(USAGE_KEYS, 0)
    total = {k: (round(earlier.get(k, 0) + run[k], 6) if k == "cost_usd" else earlier.get(k, 0) + run[k])
             for k in USAGE_KEYS}
    return {"this_run": run, "total": total}
