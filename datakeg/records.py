"""One notion of "a question-answer pair" and the row shapes datakeg writes.

``generate`` writes rows with :func:`to_row`; ``convert``/``validate`` read any row back with
:func:`from_row`, so there is a single definition of each shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMATS = ("completion", "chat", "reasoning")
REASONING_FORMATS = ("separate", "integrated")

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    reasoning: str = ""


def to_row(pair: Pair, fmt: str = "completion", reasoning_format: str = "separate",
           system_message: str | None = None) -> dict:
    if fmt == "completion":
        return {"prompt": pair.question, "completion": pair.answer}
    if fmt == "chat":
        messages = [{"role": "system", "content": system_message}] if system_message else []
        messages += [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}]
        return {"messages": messages}
    if fmt == "reasoning":
        if reasoning_format == "integrated":
            return {"prompt": pair.question, "completion": f"<think>{pair.reasoning}</think>\n{pair.answer}"}
        return {"question": pair.question, "reasoning": pair.reasoning, "answer": pair.answer}
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def from_row(row: dict) -> Pair:
    """Read back any row shape :func:`to_row` writes (integrated reasoning is split again)."""
    if "messages" in row:
        user = next(m["content"] for m in row["messages"] if m.get("role") == "user")
        assistant = next(m["content"] for m in row["messages"] if m.get("role") == "assistant")
        return Pair(user, assistant)
    if "question" in row:
        return Pair(row["question"], row["answer"], row.get("reasoning", ""))
    completion = row["completion"]
    m = _THINK.match(completion)
    if m:
        return Pair(row["prompt"], completion[m.end():], m.group(1))
    return Pair(row["prompt"], completion)
