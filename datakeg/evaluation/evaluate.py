"""Measure a model on the held-out test split, one question at a time: closed book (the question
alone), RAG (the top-k chunks BM25 retrieves from the docs, :mod:`datakeg.evaluation.rag`) and open
book (the pair's own source chunk, from the provenance beside the test file).

Scores per question: exact match after normalisation (lower case, no punctuation or articles),
token F1 (SQuAD-style), rapidfuzz similarity (token-sort ratio, 0-1) and, with a judge model, an
LLM judge's 0-5 score with its reason (normalised to 0-1). Works with every provider.

Honesty rules: every model gets exactly the same messages; ``<think>...</think>`` is stripped from
an answer before scoring; a question whose request failed is reported as failed and left out of the
averages (not scored 0); a judge reply without a usable score is counted as a judge failure and left
out of the judge average; an echo baseline (the question given back as the answer) is in every
report, so a score can be read against what costs nothing.
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datakeg.dataset.records import Pair
from datakeg.errors import ProviderRequestError
from datakeg.providers.base import ChatRequest, Provider

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)

JUDGE_SYSTEM = ("You grade answers to questions about software documentation. Compare the candidate answer "
                "with the reference answer and reply with JSON only.")
JUDGE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
                "required": ["score", "reason"], "additionalProperties": False}


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def strip_think(text: str) -> str:
    """The answer without its reasoning: closed <think> blocks removed, an unclosed one (cut off by
    the token limit) dropped with everything after it, and a stray leading ``</think>`` handled."""
    text = _THINK.sub("", text)
    low = text.lower()
    if "<think>" in low:
        text = text[:low.index("<think>")]
    elif "</think>" in low:  # the template opened the block in the prompt
        text = text[low.rindex("</think>") + len("</think>"):]
    return text.strip()


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
    answer: str = ""  # what was scored: the reply without <think> blocks
    raw_answer: str | None = None  # the reply as received, when it differs from answer
    error: str | None = None  # the request failed: not scored, not in the averages
    exact: float | None = None
    f1: float | None = None
    similarity: float | None = None
    judge: float | None = None
    judge_reason: str | None = None
    judge_error: str | None = None  # the judge failed or gave no score: not in the judge average
    split: str = "test"  # the split the question comes from (the test file's name: valid, test)
    source: str | None = None  # "file#chunk" of the pair's source chunk (provenance), when known
    context: list[str] | None = None  # RAG / open book: "file#chunk" of the passages the model was given
    hit: bool | None = None  # RAG: the source chunk is among them (None when the source is unknown)

    def score(self) -> None:
        self.exact = exact_match(self.answer, self.reference)
        self.f1 = token_f1(self.answer, self.reference)
        self.similarity = similarity(self.answer, self.reference)


SUMMARY_COLUMNS = ("questions", "answered", "failed", "exact_match", "token_f1", "similarity", "judge",
                   "judge_failed")
METRICS = ("exact_match", "token_f1", "similarity", "judge")


@dataclass
class EvalReport:
    model: str
    provider: str
    items: list[Item] = field(default_factory=list)
    role: str = "model"  # "model", "compare" (e.g. the base model) or "baseline" (echo)
    mode: str = "closed"  # "closed" (question only), "rag" (retrieved chunks) or "open" (own source chunk)

    @property
    def label(self) -> str:
        return self.model if self.mode == "closed" or self.role == "baseline" else f"{self.model} [{MODES[self.mode]}]"

    def summary(self, split: str | None = None) -> dict:
        items = [i for i in self.items if split is None or i.split == split]
        ok = [i for i in items if not i.error]
        n = len(ok)
        judged = [i.judge for i in ok if i.judge is not None]

        def mean(values):
            return round(sum(values) / len(values), 4) if values else None

        return {
            "model": self.model, "provider": self.provider, "role": self.role, "mode": self.mode,
            "questions": len(items),
            "answered": n, "failed": len(items) - n,
            "exact_match": mean([i.exact for i in ok]), "token_f1": mean([i.f1 for i in ok]),
            "similarity": mean([i.similarity for i in ok]), "judge": mean(judged),
            "judge_failed": sum(1 for i in ok if i.judge_error),
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "items": [asdict(i) for i in self.items]}


ECHO_MODEL = "echo baseline (question as answer)"
MODES = {"closed": "closed book", "rag": "RAG", "open": "open book"}


def echo_baseline(pairs: list[Pair], judge: Provider | None = None, splits: list[str] | None = None) -> EvalReport:
    """The floor every model should clear: the question itself given as the answer. Overlap metrics
    reward an answer that repeats the question's words; this row shows how much that alone earns."""
    report = EvalReport(ECHO_MODEL, "none", [Item(p.question, p.answer, answer=p.question) for p in pairs],
                        role="baseline")
    for k, item in enumerate(report.items):
        item.split = splits[k] if splits else "test"
    for item in report.items:
        item.score()
        if judge is not None:
            _judge_item(judge, item)
    return report


def differences(reports: list[EvalReport]) -> list[tuple[str, dict]]:
    """(label, {metric: first - other}) of the first report against each of the others."""
    reports = [r for r in reports if r.mode == "closed"]  # closed book against closed book (and the echo)
    if len(reports) < 2:
        return []
    first = reports[0].summary()
    rows = []
    for other in reports[1:]:
        o = other.summary()
        rows.append((f"difference ({first['model']} - {o['model']})",
                     {c: (round(first[c] - o[c], 4) if first[c] is not None and o[c] is not None else None)
                      for c in METRICS}))
    return rows


def load_test_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    from datakeg.dataset.jsonl import read_rows
    from datakeg.dataset.records import ShapeError, detect_shape, to_conversation
    from datakeg.errors import DatakegError

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


@dataclass
class Questions:
    """The questions of one or more test files, with each one's split and source chunk."""

    pairs: list
    splits: list[str]
    sources: list  # Passage | None  # the pair's own chunk (provenance), None when unknown
    traced: dict[str, bool]  # per file: whether a provenance sidecar was found beside it


def load_questions(paths: list[Path], limit: int | None = None) -> Questions:
    """Read the test files (``--limit``: the first N of each); the split of a question is its file's
    name (``valid.jsonl`` -> valid); its source chunk comes from ``provenance.jsonl`` and
    ``chunks.jsonl`` beside a merged ``<split>.jsonl`` (a row matched by its line *and* question)."""
    from datakeg.dataset import provenance
    from datakeg.evaluation.rag import Passage

    pairs, splits, sources, traced = [], [], [], {}
    cache: dict[Path, dict] = {}
    for path in paths:
        path = Path(path)
        got = load_test_pairs(path, limit)
        split = path.stem
        folder = path.parent.resolve()
        if folder not in cache:
            cache[folder] = provenance.load(folder)
        prov = cache[folder]
        traced[str(path)] = any(key[0] == split for key in prov)
        for k, pair in enumerate(got):
            src = prov.get((split, k + 1))
            ok = (src is not None and src.chunk is not None and src.text is not None and src.file is not None
                  and (src.question or "").strip() == pair.question.strip())
            sources.append(Passage(src.file, src.chunk, src.section or "", src.text) if ok else None)
            pairs.append(pair)
            splits.append(split)
    return Questions(pairs, splits, sources, traced)


_FRACTION = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)(?![\d.])")
_SCORE_WORD = re.compile(r"\b(?:score|grade|rating)\b\W{0,4}(\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BARE = re.compile(r"^\W*(\d+(?:\.\d+)?)\W*$")


def _scaled(value: str, out_of: str | None) -> float | None:
    score, top = float(value), float(out_of) if out_of else 5.0
    if top <= 0:
        return None
    score = score / top * 5.0
    return score if 0.0 <= score <= 5.0 else None


def parse_judge_reply(text: str) -> tuple[float, str] | None:
    """A 0-5 score (and reason) from a judge reply, tolerantly: JSON (also with prose or a fence
    around it, a string score such as "4" or "4/5"), "Score: 4", "4/5", "8/10" (scaled) or a bare
    number. None when no score in range can be found: a judge failure, never a 0."""
    from datakeg.generation.parsing import decode_all

    text = strip_think(text or "")
    for value in decode_all(text):
        if isinstance(value, dict):
            key = next((k for k in value if str(k).lower() in ("score", "grade", "rating")), None)
            if key is None:
                continue
            raw = value[key]
            reason = str(value.get("reason") or value.get("explanation") or "")
            if isinstance(raw, bool):
                continue
            if isinstance(raw, (int, float)):
                got = _scaled(str(raw), None)
            else:
                m = _FRACTION.search(str(raw)) or re.search(r"(\d+(?:\.\d+)?)", str(raw))
                got = _scaled(m.group(1), m.group(2) if m and m.re is _FRACTION else None) if m else None
            if got is not None:
                return got, reason
    for pattern in (_SCORE_WORD, _FRACTION):
        m = pattern.search(text)
        if m:
            got = _scaled(m.group(1), m.group(2))
            if got is not None:
                return got, text.strip()[:300]
    m = _BARE.match(text)
    if m:
        got = _scaled(m.group(1), None)
        if got is not None:
            return got, ""
    return None


def _judge_item(judge: Provider, item: Item) -> None:
    try:
        item.judge, item.judge_reason = _judge(judge, item)
    except ProviderRequestError as exc:
        item.judge, item.judge_error = None, exc.message


def _judge(judge: Provider, item: Item) -> tuple[float, str]:
    prompt = (f"Question: {item.question}\nReference answer: {item.reference}\nCandidate answer: {item.answer}\n\n"
              "Score the candidate from 0 (wrong or missing) to 5 (fully correct and complete, same facts as the "
              'reference). Reply as {"score": <0-5>, "reason": "<one sentence>"}.')
    reply = judge.complete(ChatRequest([{"role": "system", "content": JUDGE_SYSTEM},
                                        {"role": "user", "content": prompt}],
                                       schema=JUDGE_SCHEMA, temperature=0.0, max_tokens=200,
                                       task={"kind": "judge"}))
    parsed = parse_judge_reply(reply.text)
    if parsed is None:
        raise ProviderRequestError(f"judge reply without a usable 0-5 score: {reply.text[:200]!r}")
    return round(parsed[0] / 5.0, 4), parsed[1]


def question_messages(question: str, system_message: str | None = None) -> list[dict]:
    """The one prompt every evaluated model gets: an optional system turn, then the question."""
    messages = [{"role": "system", "content": system_message}] if system_message else []
    messages.append({"role": "user", "content": question})
    return messages


def evaluate(pairs: list[Pair], provider: Provider, *, system_message: str | None = None,
             judge: Provider | None = None, concurrency: int = 1, max_tokens: int = 256,
             on_item=lambda item: None, mode: str = "closed", contexts: list | None = None,
             splits: list[str] | None = None, sources: list[str | None] | None = None) -> EvalReport:
    """Ask every question and score the answers. Order of items = order of pairs.

    ``mode`` "closed": the question alone. "rag" / "open": ``contexts[k]`` holds the passages
    (:class:`datakeg.evaluation.rag.Passage`) given with question k (None: no passage could be found,
    the question is reported as failed). ``splits`` / ``sources``: each question's split and source
    chunk key ("file#chunk"), for per-split figures and the retrieval hit rate."""
    from datakeg.evaluation.rag import context_messages

    report = EvalReport(provider.describe().get("model") or "?", provider.name,
                        [Item(p.question, p.answer) for p in pairs], mode=mode)
    for k, item in enumerate(report.items):
        item.split = splits[k] if splits else "test"
        item.source = sources[k] if sources else None
        if contexts is not None and contexts[k] is not None:
            item.context = [c.key for c in contexts[k]]
            item.hit = (item.source in item.context) if item.source else None
    lock = threading.Lock()

    def one(k_item) -> None:
        k, item = k_item
        if mode == "closed":
            messages = question_messages(item.question, system_message)
        elif contexts is None or contexts[k] is None:
            item.error = "no source chunk for this question in the provenance (open book needs one)"
            with lock:
                on_item(item)
            return
        else:
            messages = context_messages(item.question, contexts[k], system_message)
        try:
            reply = provider.complete(ChatRequest(messages, schema=None, temperature=0.0, max_tokens=max_tokens,
                                                  task={"kind": "answer", "question": item.question}))
        except ProviderRequestError as exc:
            item.error = exc.message
        else:
            raw = (reply.text or "").strip()
            item.answer = strip_think(raw)
            item.raw_answer = raw if raw != item.answer else None
            item.score()
            if judge is not None:
                _judge_item(judge, item)
        with lock:
            on_item(item)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, enumerate(report.items)))
    return report


def splits_of(reports: list[EvalReport]) -> list[str]:
    seen: dict[str, None] = {}
    for r in reports:
        for i in r.items:
            seen.setdefault(i.split)
    return list(seen)


def hit_rate(reports: list[EvalReport], split: str | None = None) -> tuple[float | None, int]:
    """(share of questions whose source chunk was among the retrieved ones, questions with a known
    source) of the first RAG report; (None, 0) without RAG or provenance."""
    rag = next((r for r in reports if r.mode == "rag"), None)
    if rag is None:
        return None, 0
    known = [i.hit for i in rag.items if i.hit is not None and (split is None or i.split == split)]
    return (round(sum(known) / len(known), 4) if known else None), len(known)


def headline_metric(reports: list[EvalReport]) -> str:
    """The judge score when every model was judged, token F1 otherwise."""
    judged = [r.summary()["judge"] for r in reports if r.role != "baseline"]
    return "judge" if judged and all(j is not None for j in judged) else "token_f1"


def side_by_side(reports: list[EvalReport]) -> list[dict]:
    """Per split of the questions (and "all"), per model: the score closed book, with RAG and open
    book (token F1 and judge), closed book as a share of RAG, and the retrieval hit rate; the echo
    baseline's row has its closed-book score only."""
    splits = splits_of(reports)
    metric = headline_metric(reports)
    models: dict[tuple[str, str], None] = {}
    for r in reports:
        models.setdefault((r.model, r.role))
    rows = []
    for split in splits + (["all"] if len(splits) > 1 else []):
        sp = None if split == "all" else split
        rate, known = hit_rate(reports, sp)
        for model, role in models:
            row = {"split": split, "model": model, "role": role}
            for mode in MODES:
                rep = next((r for r in reports if r.model == model and r.role == role and r.mode == mode), None)
                s = rep.summary(sp) if rep is not None else None
                row[f"{mode}_f1"] = s["token_f1"] if s else None
                row[f"{mode}_judge"] = s["judge"] if s else None
            suffix = "judge" if metric == "judge" else "f1"
            closed, rag = row[f"closed_{suffix}"], row[f"rag_{suffix}"]
            row["closed_of_rag"] = round(closed / rag, 4) if closed is not None and rag else None
            row["rag_hit_rate"] = rate if role != "baseline" and any(r.mode == "rag" for r in reports) else None
            row["rag_hit_known"] = known if row["rag_hit_rate"] is not None else None
            rows.append(row)
    return rows


def headlines(reports: list[EvalReport]) -> list[str]:
    """"closed book reaches N% of RAG" for each evaluated model (over all questions)."""
    metric = headline_metric(reports)
    out = []
    for r in reports:
        if r.mode != "closed" or r.role == "baseline":
            continue
        rag = next((x for x in reports if x.model == r.model and x.role == r.role and x.mode == "rag"), None)
        if rag is None:
            continue
        c, g = r.summary()[metric], rag.summary()[metric]
        name = "judge score" if metric == "judge" else "token F1"
        if c is None or not g:
            out.append(f"{r.model}: closed book vs RAG cannot be compared ({name}: {c} vs {g})")
        else:
            out.append(f"{r.model}: closed book reaches {100 * c / g:.0f}% of RAG ({name} {c:.3f} vs {g:.3f})")
    return out


SIDE_COLUMNS = ("split", "model", "closed book F1", "RAG F1", "open book F1", "closed book judge", "RAG judge",
                "open book judge", "closed/RAG", "RAG hit rate")


def side_rows(reports: list[EvalReport]) -> list[list[str]]:
    def cell(v, pct=False):
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else str(v))

    return [[row["split"], str(row["model"]), cell(row["closed_f1"]), cell(row["rag_f1"]), cell(row["open_f1"]),
             cell(row["closed_judge"]), cell(row["rag_judge"]), cell(row["open_judge"]),
             cell(row["closed_of_rag"], True), cell(row["rag_hit_rate"])] for row in side_by_side(reports)]


def summary_rows(reports: list[EvalReport]) -> list[list[str]]:
    """The summary table (model, then SUMMARY_COLUMNS) with the difference rows, as text cells."""
    rows = []
    for r in reports:
        s = r.summary()
        rows.append([r.label] + ["-" if s[c] is None else str(s[c]) for c in SUMMARY_COLUMNS])
    for label, diff in differences(reports):
        rows.append([label] + [("-" if diff[c] is None else f"{diff[c]:+.4f}") if c in METRICS else ""
                               for c in SUMMARY_COLUMNS])
    return rows


def markdown(reports: list[EvalReport]) -> str:
    lines = ["# datakeg eval", "", "| model | " + " | ".join(SUMMARY_COLUMNS) + " |",
             "|---|" + "---:|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(reports)]
    lines += ["", "Averages cover the answered questions; failed questions and judge failures are counted apart. "
              f"The {ECHO_MODEL} shows what repeating the question earns."]
    if any(r.mode != "closed" for r in reports):
        lines += ["", "## Closed book, RAG and open book", ""]
        lines += [f"**{h}**" for h in headlines(reports)] + [""]
        lines += ["| " + " | ".join(SIDE_COLUMNS) + " |", "|---|---|" + "---:|" * (len(SIDE_COLUMNS) - 2)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in side_rows(reports)]
        lines += ["", "RAG: the top-k chunks BM25 retrieves from the docs; open book: the pair's own source chunk; "
                  "hit rate: share of questions whose source chunk was among the retrieved ones."]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in reports:
        lines += ["", f"## {r.label}", "", "| # | question | reference | answer | EM | F1 | sim | judge |",
                  "|---:|---|---|---|---:|---:|---:|---:|"]
        for k, i in enumerate(r.items, 1):
            cells = [i.question, i.reference, i.error and f"FAILED: {i.error}" or i.answer]
            cells = [c.replace("|", "\\|").replace("\n", " ")[:200] for c in cells]
            judge = "failed" if i.judge_error else num(i.judge, ".2f")
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {num(i.exact, '.0f')} | {num(i.f1, '.2f')} | "
                         f"{num(i.similarity, '.2f')} | {judge} |")
    return "\n".join(lines) + "\n"


def write_reports(reports: list[EvalReport], prefix: Path) -> tuple[Path, Path]:
    from datakeg.dataset.atomic import atomic_write_text
    from datakeg.dataset.writers import atomic_write_json

    prefix = Path(prefix)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    data = {"reports": [r.to_dict() for r in reports]}
    if any(r.mode != "closed" for r in reports):
        data.update(side_by_side=side_by_side(reports), headline=headlines(reports),
                    rag_hit_rate=hit_rate(reports)[0])
    atomic_write_json(json_path, data)
    atomic_write_text(md_path, [markdown(reports)])
    return json_path, md_path
