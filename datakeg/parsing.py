"""Turn a model reply into pairs, tolerantly.

Structured output is requested where the provider supports it, but small and local models still
wrap JSON in code fences, return one object instead of a list, write JSON lines, or add prose
after the JSON. All of that is accepted. A reply with no usable JSON at all raises
:class:`ParseError` (the caller keeps the raw text in ``rejects.jsonl``).
"""

from __future__ import annotations

import json
import re

from datakeg.records import Pair

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)

QUESTION_KEYS = ("question", "q", "prompt", "instruction", "query")
ANSWER_KEYS = ("answer", "a", "completion", "response", "output")
REASONING_KEYS = ("reasoning", "thinking", "rationale", "explanation", "thought")
LIST_KEYS = ("pairs", "qa_pairs", "questions", "items", "data", "results", "examples")


class ParseError(ValueError):
    pass


def pairs_schema(with_reasoning: bool = False) -> dict:
    """The JSON schema sent as structured-output format."""
    props = {"question": {"type": "string"}}
    if with_reasoning:
        props["reasoning"] = {"type": "string"}
    props["answer"] = {"type": "string"}
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


def _items(value) -> list[dict] | None:
    """Find the list of pair objects inside a decoded JSON value."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        if _pick(value, QUESTION_KEYS) and _pick(value, ANSWER_KEYS):
            return [value]
        lowered = {str(k).lower(): v for k, v in value.items()}
        for key in LIST_KEYS:
            if isinstance(lowered.get(key), list):
                return _items(lowered[key])
        for v in value.values():  # any single list of objects
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                return v
    return None


def _decode_all(text: str) -> list:
    """Every JSON value found in ``text``, scanning past prose between them."""
    decoder = json.JSONDecoder()
    values, i = [], 0
    while i < len(text):
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p != -1]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        values.append(value)
        i = end
    return values


def parse_pairs(text: str) -> list[Pair]:
    """Extract pairs from a reply. Raises ParseError when the reply contains no usable pairs.

    An empty list is returned only for a well-formed reply that holds an empty list.
    """
    if not text or not text.strip():
        raise ParseError("empty reply")
    body = _THINK_BLOCK.sub("", text)
    candidates = [m.group(1) for m in _FENCE.finditer(body)] or []
    candidates.append(body)
    for candidate in candidates:
        values = _decode_all(candidate)
        items: list[dict] = []
        found_container = False
        for value in values:
            got = _items(value)
            if got is not None:
                found_container = True
                items.extend(got)
        if not found_container:
            continue
        pairs = []
        for obj in items:
            q, a = _pick(obj, QUESTION_KEYS), _pick(obj, ANSWER_KEYS)
            if q or a:
                pairs.append(Pair(q, a, _pick(obj, REASONING_KEYS)))
        if pairs or not items:
            return pairs
    salvaged = _salvage(body)
    if salvaged:
        return salvaged
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
