"""Measure a model on the held-out test split: closed book, one question at a time.

Scores per question: exact match after normalisation (lower case, no punctuation or articles),
token F1 (SQuAD-style), rapidfuzz similarity (token-sort ratio, 0-1) and, with a judge model, an
LLM judge's 0-5 score with its reason (normalised to 0-1). Works with every provider.
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakeg.errors import ProviderRequestError
from datakeg.providers.base import ChatRequest, Provider
from datakeg.records import Pair

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)

JUDGE_SYSTEM = ("You grade answers to questions about software documentation. Compare the candidate answer "
                "with the reference answer and reply with JSON only.")
JUDGE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
                "required": ["score", "reason"], "additionalProperties": False}


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def similarity(prediction: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.token_sort_ratio(normalize_answer(prediction), normalize_answer(reference)) / 100.0


@dataclass
class Item:
    question: str
    reference: str
    answer: str = ""
    error: str | None = None
    exact: float = 0.0
    f1: float = 0.0
    similarity: float = 0.0
    judge: float | None = None
    judge_reason: str | None = None


@dataclass
class EvalReport:
    model: str
    provider: str
    items: list[Item] = field(default_factory=list)

    def summary(self) -> dict:
        n = len(self.items) or 1
        judged = [i.judge for i in self.items if i.judge is not None]
        return {
            "model": self.model, "provider": self.provider, "questions": len(self.items),
            "errors": sum(1 for i in self.items if i.error),
            "exact_match": round(sum(i.exact for i in self.items) / n, 4),
            "token_f1": round(sum(i.f1 for i in self.items) / n, 4),
            "similarity": round(sum(i.similarity for i in self.items) / n, 4),
            "judge": round(sum(judged) / len(judged), 4) if judged else None,
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "items": [asdict(i) for i in self.items]}


def load_test_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    from datakeg.errors import DatakegError
    from datakeg.jsonl import read_rows
    from datakeg.records import ShapeError, detect_shape, to_conversation

    pairs = []
    for lineno, value, error in read_rows(path, allow_array=True):
        if error:
            raise DatakegError(f"{path} line {lineno}: {error}", "Check the file with `datakeg validate`.")
        try:
            pairs.append(to_conversation(value, detect_shape(value)).first_pair())
        except ShapeError as exc:
            raise DatakegError(f"{path} line {lineno}: {exc}", "Check the file with `datakeg validate`.") from None
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise DatakegError(f"{path} holds no question/answer rows.")
    return pairs


def _judge(judge: Provider, item: Item) -> tuple[float, str]:
    from datakeg.parsing import _decode_all

    prompt = (f"Question: {item.question}\nReference answer: {item.reference}\nCandidate answer: {item.answer}\n\n"
              "Score the candidate from 0 (wrong or missing) to 5 (fully correct and complete, same facts as the "
              'reference). Reply as {"score": <0-5>, "reason": "<one sentence>"}.')
    reply = judge.complete(ChatRequest([{"role": "system", "content": JUDGE_SYSTEM},
                                        {"role": "user", "content": prompt}],
                                       schema=JUDGE_SCHEMA, temperature=0.0, max_tokens=200,
                                       task={"kind": "judge"}))
    for value in _decode_all(reply.text):
        if isinstance(value, dict) and "score" in value:
            score = max(0.0, min(5.0, float(value["score"])))
            return score / 5.0, str(value.get("reason", ""))
    raise ProviderRequestError(f"judge reply without a score: {reply.text[:200]!r}")


def evaluate(pairs: list[Pair], provider: Provider, *, system_message: str | None = None,
             judge: Provider | None = None, concurrency: int = 1, max_tokens: int = 256,
             on_item=lambda item: None) -> EvalReport:
    """Ask every question (closed book) and score the answers. Order of items = order of pairs."""
    report = EvalReport(provider.describe().get("model") or "?", provider.name,
                        [Item(p.question, p.answer) for p in pairs])
    lock = threading.Lock()

    def one(item: Item) -> None:
        messages = ([{"role": "system", "content": system_message}] if system_message else [])
        messages.append({"role": "user", "content": item.question})
        try:
            reply = provider.complete(ChatRequest(messages, schema=None, temperature=0.0, max_tokens=max_tokens,
                                                  task={"kind": "answer", "question": item.question}))
            item.answer = reply.text.strip()
        except ProviderRequestError as exc:
            item.error = exc.message
        item.exact = exact_match(item.answer, item.reference)
        item.f1 = token_f1(item.answer, item.reference)
        item.similarity = similarity(item.answer, item.reference)
        if judge is not None and not item.error:
            try:
                item.judge, item.judge_reason = _judge(judge, item)
            except ProviderRequestError as exc:
                item.judge_reason = f"judge failed: {exc.message}"
        with lock:
            on_item(item)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, report.items))
    return report


def markdown(reports: list[EvalReport]) -> str:
    cols = ("questions", "errors", "exact_match", "token_f1", "similarity", "judge")
    lines = ["# datakeg eval", "", "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in reports:
        s = r.summary()
        lines.append(f"| {s['model']} | " + " | ".join("-" if s[c] is None else str(s[c]) for c in cols) + " |")
    if len(reports) == 2:
        a, b = (r.summary() for r in reports)
        diff = [f"{a[c] - b[c]:+.4f}" if isinstance(a[c], float) and isinstance(b[c], float) else "-"
                for c in cols[2:]]
        lines.append(f"| difference ({a['model']} - {b['model']}) | | | " + " | ".join(diff) + " |")
    for r in reports:
        lines += ["", f"## {r.model}", "", "| # | question | reference | answer | EM | F1 | sim | judge |",
                  "|---:|---|---|---|---:|---:|---:|---:|"]
        for k, i in enumerate(r.items, 1):
            cells = [i.question, i.reference, i.error and f"ERROR: {i.error}" or i.answer]
            cells = [c.replace("|", "\\|").replace("\n", " ")[:200] for c in cells]
            judge = "-" if i.judge is None else f"{i.judge:.2f}"
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {i.exact:.0f} | {i.f1:.2f} | {i.similarity:.2f} | {judge} |")
    return "\n".join(lines) + "\n"


def write_reports(reports: list[EvalReport], prefix: Path) -> tuple[Path, Path]:
    from datakeg.writers import atomic_write_json, atomic_write_text

    prefix = Path(prefix)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    atomic_write_json(json_path, {"reports": [r.to_dict() for r in reports]})
    atomic_write_text(md_path, [markdown(reports)])
    return json_path, md_path
