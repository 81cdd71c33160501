"""Coverage of a run: pairs per heading section (a chunk's breadcrumb) and split, the sections
that got none, and the mix of question kinds per split.

Kinds: ``what``, ``how``, ``why``, ``when``, ``which``, ``yes-no`` and ``other`` (where, who, how
many are ``how``...), recognised in English, German, French, Spanish, Chinese and Japanese by the
first interrogative word of the question (a question opening with a verb is yes-no)."""

from __future__ import annotations

import re
from collections import Counter

from datakeg.dataset.splits import SPLITS

KINDS = ("what", "how", "why", "when", "which", "yes-no", "other")
UNRECOGNISED = "(unrecognised)"  # a pair whose kind label names none of the task's kinds

_B = r"(?<![\w])"
_KIND_PATTERNS = [
    ("why", rf"{_B}(?:why|warum|wieso|weshalb|pourquoi|por qué|porqué|para qué)\b|为什么|为何|なぜ|どうして"),
    ("when", rf"{_B}(?:when|wann|quand|cuándo)\b|什么时候|何时|いつ"),
    ("which", rf"{_B}(?:which|welche[rsmn]?|quel(?:le)?s?|lequel|laquelle|cuál(?:es)?)\b|哪|どの|どれ|どちら"),
    ("how", rf"{_B}(?:how|wie|comment|cómo|combien|cuánto[s]?|cuánta[s]?)\b|怎么|怎样|如何|多少|几|どう|どのよう|いくつ|どれくらい"),
    ("what", rf"{_B}(?:what|was|que|qu['’]|quoi|qué)(?:\b|(?<=['’]))|什么|何(?!时|故)|なに|なん"),
    ("other", rf"{_B}(?:where|who|whom|whose|wo|wer|wem|wen|woher|wohin|où|qui|dónde|quién(?:es)?)\b|哪里|谁|どこ|誰"),
]
_KIND_RE = [(k, re.compile(p, re.IGNORECASE)) for k, p in _KIND_PATTERNS]
_YES_NO = re.compile(
    r"^\W*(?:is|are|was|were|do|does|did|can|could|should|will|would|has|have|must|may|ist|sind|kann|können|muss|"
    r"müssen|soll|sollte|gibt|hat|haben|wird|werden|darf|braucht|unterstützt|est-ce|peut-on|peut|faut-il|y a-t-il|"
    r"existe-t-il|¿?(?:es|son|puede|pueden|se puede|hay|debe|tiene|está|necesita|funciona|admite))\b"
    r"|吗\s*[？?]?\s*$|是否|能否|可否|是不是|(?:ますか|ですか|でしょうか|ませんか)\s*[？?]?\s*$", re.IGNORECASE)


def question_kind(question: str) -> str:
    q = question.strip()
    found = [(m.start(), k) for k, pat in _KIND_RE for m in [pat.search(q)] if m]
    if found:
        kind = min(found)[1]
        # "was" opens German what-questions but English yes-no ones
        if kind == "what" and re.match(r"^\W*was\b", q, re.IGNORECASE) and re.search(r"\b(?:the|it|this|there)\b", q):
            return "yes-no"
        return kind
    return "yes-no" if _YES_NO.search(q) else "other"


def coverage(results, task=None) -> dict:
    """The manifest's ``coverage`` section from the finished documents (None entries skipped).
    With a task that sets a mix of kinds: ``task_kinds`` per split and kind, the share asked (the
    weights), the pairs planned for it, the pairs delivered and their share; pairs whose kind was
    not recognised count under ``(unrecognised)``."""
    sections = []
    kinds = {sp: Counter() for sp in SPLITS}
    task_kinds = {sp: Counter() for sp in SPLITS}
    planned = {sp: Counter() for sp in SPLITS}
    for res in results:
        if res is None:
            continue
        by_crumb: dict[str, dict] = {}
        for i, chunk in enumerate(res.plan.chunks):
            crumb = chunk.breadcrumb or "(top of the document)"
            entry = by_crumb.setdefault(crumb, {"file": res.plan.doc.relpath, "section": crumb, "chars": 0,
                                                "pairs": {sp: 0 for sp in SPLITS}})
            entry["chars"] += len(chunk)
            for sp in SPLITS:
                entry["pairs"][sp] += len(res.slots[i][sp].pairs)
        sections.extend(by_crumb.values())
        for sp in SPLITS:
            kinds[sp].update(question_kind(p.question) for p in res.pairs(sp))
            if task is not None and task.kinds:
                task_kinds[sp].update(p.kind or UNRECOGNISED for p in res.pairs(sp))
                planned[sp].update(k for per in (res.plan.kinds or []) for k in per[sp])
    mix = {}
    if task is not None and task.kinds:
        for sp in SPLITS:
            total = sum(task_kinds[sp].values())
            rows = {}
            for name, share in task.mix.items():
                got = task_kinds[sp][name]
                rows[name] = {"asked_share": round(share, 4), "planned": planned[sp][name], "delivered": got,
                              "delivered_share": round(got / total, 4) if total else None}
            if task_kinds[sp][UNRECOGNISED]:
                got = task_kinds[sp][UNRECOGNISED]
                rows[UNRECOGNISED] = {"asked_share": 0.0, "planned": 0, "delivered": got,
                                      "delivered_share": round(got / total, 4)}
            mix[sp] = rows
    return {
        "sections": sections,
        "sections_without_pairs": [f"{s['file']}: {s['section']}" for s in sections if not sum(s["pairs"].values())],
        "question_kinds": {sp: {k: kinds[sp][k] for k in KINDS} for sp in SPLITS},
        **({"task_kinds": mix} if mix else {}),
    }


def summary_lines(cov: dict) -> list[str]:
    """A short human summary (the CLI prints it after a run)."""
    n = len(cov["sections"])
    empty = cov["sections_without_pairs"]
    lines = [f"Coverage: {n - len(empty)}/{n} section(s) got pairs"
             + (f"; none for: {'; '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}" if empty else ".")]
    for sp in SPLITS:
        counts = cov["question_kinds"][sp]
        total = sum(counts.values())
        if total:
            lines.append(f"  {sp} question kinds: " + ", ".join(
                f"{k} {100 * v / total:.0f}%" for k, v in counts.items() if v))
    for sp, rows in cov.get("task_kinds", {}).items():
        if any(r["delivered"] for r in rows.values()):
            lines.append(f"  {sp} task kinds, asked -> delivered: " + ", ".join(
                f"{k} {100 * r['asked_share']:.0f}% -> {100 * (r['delivered_share'] or 0):.0f}%"
                for k, r in rows.items()))
    return lines
