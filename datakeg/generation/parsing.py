"""Turn a model reply into pairs, tolerantly.

Structured output is requested where the provider supports it, but small and local models still
wrap JSON in code fences, return one object instead of a list, write JSON lines, or add prose
(with its own brackets: "see [1]") around the JSON. All of that is accepted: every JSON value in
the reply is looked at, and a stray array or bracket never hides the pairs. Almost-JSON (cut
short, single quotes, trailing commas, missing braces) is repaired with ``json-repair``, keeping
only complete pairs, then with a last-resort regex.

A reply that yields no pairs raises :class:`ParseError` (the caller counts it as unparseable and
keeps the raw text in ``rejects.jsonl``); an empty list is returned only for a well-formed reply
whose pair list is explicitly empty (``{"pairs": []}``).
"""

from __future__ import annotations

import json
import re

from datakeg.dataset.records import Pair

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)

QUESTION_KEYS = ("question", "q", "prompt", "instruction", "query")
ANSWER_KEYS = ("answer", "a", "completion", "response", "output")
REASONING_KEYS = ("reasoning", "thinking", "rationale", "explanation", "thought")
LIST_KEYS = ("pairs", "qa_pairs", "questions", "items", "data", "results", "examples")


class ParseError(ValueError):
    pass


def pairs_schema(with_reasoning: bool = False, kinds: list[str] | None = None, turns: int = 1) -> dict:
    """The JSON schema sent as structured-output format (``kinds``: the task's kind names, for a
    "kind" field; ``turns`` > 1: a "followups" list of the later turns)."""
    props = {"question": {"type": "string"}}
    if with_reasoning:
        props["reasoning"] = {"type": "string"}
    props["answer"] = {"type": "string"}
    if kinds:
        props["kind"] = {"type": "string", "enum": list(kinds)}
    if turns > 1:
        turn = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"], "additionalProperties": False}
        props["followups"] = {"type": "array", "items": turn, "minItems": turns - 1, "maxItems": turns - 1}
    return {
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": props,
                    "required": list(props),
                    "additionalProperties": False,
                },
            }
        },
        "required": ["pairs"],
        "additionalProperties": False,
    }


def _text(value) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(v.strip() for v in value)
    return ""


def _pick(obj: dict, keys: tuple[str, ...]) -> str:
    lowered = {str(k).lower(): v for k, v in obj.items()}
    for key in keys:
        if key in lowered:
            return _text(lowered[key])
    return ""


def _pair_like(obj: dict) -> bool:
    lowered = {str(k).lower() for k in obj}
    return any(k in lowered for k in QUESTION_KEYS + ANSWER_KEYS) and bool(_pick(obj, QUESTION_KEYS) or
                                                                      _pick(obj, ANSWER_KEYS))


def _collect(value, depth: int = 0) -> tuple[list[dict], bool]:
    """The pair objects inside a decoded JSON value, and whether it holds an explicitly empty pair
    list (``{"pairs": []}``). Objects and lists are searched a few levels deep."""
    if depth > 4:
        return [], False
    if isinstance(value, dict):
        if _pair_like(value):
            return [value], False
        lowered = {str(k).lower(): v for k, v in value.items()}
        for key in LIST_KEYS:
            if isinstance(lowered.get(key), list):
                found, empty = _collect(lowered[key], depth + 1)
                if found:
                    return found, False
                if not lowered[key]:
                    return [], True
        value = list(value.values())
    if isinstance(value, list):
        found, empty = [], False
        for v in value:
            if isinstance(v, (dict, list)):
                got, e = _collect(v, depth + 1)
                found.extend(got)
                empty = empty or e
        return found, empty
    return [], False


FOLLOWUP_KEYS = ("followups", "follow_ups", "followup", "turns")


def _followups(obj: dict) -> tuple:
    """The later turns of a conversation: ((question, answer), ...) from a "followups" list."""
    lowered = {str(k).lower(): v for k, v in obj.items()}
    raw = next((lowered[k] for k in FOLLOWUP_KEYS if isinstance(lowered.get(k), list)), [])
    return tuple((_pick(t, QUESTION_KEYS), _pick(t, ANSWER_KEYS)) for t in raw if isinstance(t, dict))


def _to_pairs(items: list[dict], complete_only: bool = False) -> list[Pair]:
    pairs = []
    for obj in items:
        q, a = _pick(obj, QUESTION_KEYS), _pick(obj, ANSWER_KEYS)
        if (q and a) if complete_only else (q or a):
            pairs.append(Pair(q, a, _pick(obj, REASONING_KEYS), followups=_followups(obj),
                              kind=_pick(obj, ("kind", "type", "category")) or None))
    return pairs


def _repair(text: str) -> list[Pair]:
    """Complete pairs from almost-JSON, repaired by ``json-repair`` (a cut-off last pair is dropped)."""
    try:
        import json_repair
    except ImportError:  # declared as a dependency; without it the regex below still salvages
        return []
    try:
        value = json_repair.loads(text)
    except Exception:  # noqa: BLE001 - a repair attempt must never turn into a crash
        return []
    return _to_pairs(_collect(value)[0], complete_only=True)


def _scan(text: str) -> tuple[list, bool]:
    """Every JSON value found in ``text``, scanning past prose between them, and whether some
    ``{`` or ``[`` did not start valid JSON (prose brackets, or JSON cut short)."""
    decoder = json.JSONDecoder()
    values, i, failed = [], 0, False
    while i < len(text):
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p != -1]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            failed = True
            i = start + 1
            continue
        values.append(value)
        i = end
    return values, failed


def decode_all(text: str) -> list:
    """Every JSON value found in ``text``, scanning past prose between them."""
    return _scan(text)[0]


def parse_pairs(text: str) -> list[Pair]:
    """Extract pairs from a reply. Raises ParseError when the reply yields no pairs.

    An empty list is returned only for a well-formed reply whose pair list is explicitly empty.
    """
    if not text or not text.strip():
        raise ParseError("empty reply")
    body = _THINK_BLOCK.sub("", text)
    candidates = [m.group(1) for m in _FENCE.finditer(body)]
    candidates.append(body)
    explicit_empty = False
    for candidate in candidates:
        items: list[dict] = []
        values, failed = _scan(candidate)
        for value in values:
            got, empty = _collect(value)
            items.extend(got)
            explicit_empty = explicit_empty or empty
        pairs = _to_pairs(items)
        if failed:  # part of the candidate is not valid JSON: a repair may recover more pairs
            repaired = _repair(candidate)
            if len(repaired) > len([p for p in pairs if p.question and p.answer]):
                pairs = repaired
        if pairs:
            return pairs
    salvaged = _salvage(body)
    if salvaged:
        return salvaged
    if explicit_empty:
        return []
    raise ParseError("no JSON question/answer pairs found in the reply")


_STRING = r'"((?:[^"\\\n]|\\.)*)"'
_LOOSE_PAIR = re.compile(
    r'"(?:question|q)"\s*:\s*' + _STRING + r'\s*,\s*(?:"(?:reasoning|thinking)"\s*:\s*' + _STRING
    + r'\s*,\s*)?"(?:answer|a)"\s*:\s*' + _STRING, re.IGNORECASE)


def _salvage(text: str) -> list[Pair]:
    """Last resort for almost-JSON (a stray character after a string, a missing brace): pick out
    "question": "...", "answer": "..." sequences whose strings are themselves valid JSON."""
    pairs = []
    for m in _LOOSE_PAIR.finditer(text):
        try:
            q, r, a = (json.loads(f'"{g}"') if g is not None else "" for g in m.groups())
        except json.JSONDecodeError:
            continue
        pairs.append(Pair(q.strip(), a.strip(), r.strip()))
    return pairs
