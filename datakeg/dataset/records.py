"""One notion of "a conversation" and every row shape datakeg reads or writes.

``generate`` writes rows with :func:`to_row`; ``convert`` and ``validate`` read any supported row
with :func:`detect_shape` / :func:`to_conversation` and write with the targets in
``datakeg.dataset.conversion``. There is no second parser.

Shapes (input):
  completion   {"prompt", "completion"}            (also integrated reasoning: <think>..</think> first)
  chat         {"messages": [{"role", "content"}]}  (OpenAI / mlx-lm chat)
  reasoning    {"question", "reasoning", "answer"}
  alpaca       {"instruction", "input"?, "output"}  (also "system"?)
  sharegpt     {"conversations": [{"from": "system"|"human"|"gpt", "value"}]}
  text         {"text"}                             (plain text: validate only, cannot be re-shaped)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FORMATS = ("completion", "chat", "reasoning")
REASONING_FORMATS = ("separate", "integrated")
SHAPES = ("completion", "chat", "reasoning", "alpaca", "sharegpt", "text")

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class Pair:
    question: str
    answer: str
    reasoning: str = ""
    # the judge's scores, written as an extra "scores" field of the row (--keep-scores); not part of
    # the pair's identity, and ignored by every reader
    scores: dict | None = field(default=None, compare=False, hash=False, repr=False)
    # the later turns of a multi-turn conversation (a task with turns > 1): ((question, answer), ...)
    followups: tuple = ()
    # the kind of question the generating model labelled it with (a task with [kinds]); not written
    kind: str | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def user_turns(self) -> list[tuple[str, str]]:
        """Every (question, answer) exchange, the first one first."""
        return [(self.question, self.answer), *((q, a) for q, a in self.followups)]

    def conversation(self, system: str | None = None) -> Conversation:
        msgs = [{"role": "system", "content": system}] if system else []
        for q, a in self.user_turns:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return Conversation(msgs, self.reasoning)


@dataclass
class Conversation:
    """Turns in order (roles system/user/assistant) plus the reasoning behind the final answer."""

    messages: list[dict] = field(default_factory=list)
    reasoning: str = ""

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    @property
    def turns(self) -> list[dict]:
        return [m for m in self.messages if m["role"] != "system"]

    def first_pair(self) -> Pair:
        turns = self.turns
        user = next(m["content"] for m in turns if m["role"] == "user")
        assistant = next(m["content"] for m in turns if m["role"] == "assistant")
        return Pair(user, assistant, self.reasoning)

    @property
    def multi_turn(self) -> bool:
        return len(self.turns) > 2


class ShapeError(ValueError):
    """A row that is not of the expected shape; the message says what is wrong."""


def detect_shape(row) -> str | None:
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "question" in row and "answer" in row:
        return "reasoning"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "completion"
    if "text" in row:
        return "text"
    return None


def _str(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ShapeError(f'"{key}" must be a string, got {type(value).__name__}')
    if required and not value.strip():
        raise ShapeError(f'"{key}" is empty' if key in row else f'"{key}" is missing')
    return value


def _check_roles(messages: list[dict]) -> None:
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise ShapeError("a system message may only come first")
    if not body:
        raise ShapeError("no user/assistant turns")
    for i, role in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise ShapeError(f"roles must alternate user/assistant; turn {i + 1} is {role!r}")
    if body[-1] != "assistant":
        raise ShapeError("the conversation must end with an assistant turn")


def to_conversation(row, shape: str) -> Conversation:
    """Read one row of ``shape``. Raises ShapeError with the reason when the row does not fit."""
    if not isinstance(row, dict):
        raise ShapeError(f"expected a JSON object, got {type(row).__name__}")
    if shape == "completion":
        prompt, completion = _str(row, "prompt"), _str(row, "completion")
        m = _THINK.match(completion)
        reasoning, answer = (m.group(1).strip(), completion[m.end():]) if m else ("", completion)
        if not answer.strip():
            raise ShapeError('"completion" holds no answer after </think>')
        return Pair(prompt, answer, reasoning).conversation()
    if shape == "reasoning":
        return Pair(_str(row, "question"), _str(row, "answer"), _str(row, "reasoning", required=False)).conversation()
    if shape == "alpaca":
        instruction, extra = _str(row, "instruction"), _str(row, "input", required=False)
        question = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Pair(question, _str(row, "output")).conversation(_str(row, "system", required=False) or None)
    if shape in ("chat", "sharegpt"):
        key, role_key, text_key = ("messages", "role", "content") if shape == "chat" else ("conversations", "from", "value")
        raw = row.get(key)
        if not isinstance(raw, list) or not raw:
            raise ShapeError(f'"{key}" must be a non-empty list')
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise ShapeError(f"{key}[{i}] is not an object")
            role = m.get(role_key)
            role = _SHAREGPT_ROLES.get(role) if shape == "sharegpt" else role
            if role not in ("system", "user", "assistant"):
                raise ShapeError(f"{key}[{i}] has unknown {role_key} {m.get(role_key)!r}")
            content = m.get(text_key)
            if not isinstance(content, str) or not content.strip():
                raise ShapeError(f'{key}[{i}] ({role}) has an empty "{text_key}"')
            messages.append({"role": role, "content": content})
        _check_roles(messages)
        reasoning = ""
        last = messages[-1]
        m = _THINK.match(last["content"])
        if m:
            reasoning, last["content"] = m.group(1).strip(), last["content"][m.end():]
        return Conversation(messages, reasoning)
    if shape == "text":
        _str(row, "text")
        raise ShapeError('plain {"text"} rows hold no question/answer structure to convert')
    raise ShapeError(f"unknown shape {shape!r}")


def to_row(pair: Pair, fmt: str = "completion", reasoning_format: str = "separate",
           system_message: str | None = None) -> dict:
    """The row ``generate`` writes for one pair (plus ``"scores"`` when the pair carries the judge's).
    A multi-turn conversation is always a ``{"messages"}`` row (no other shape holds its turns)."""
    if pair.followups and fmt != "reasoning":
        row = {"messages": pair.conversation(system_message).messages}
    elif fmt == "completion":
        row = {"prompt": pair.question, "completion": pair.answer}
    elif fmt == "chat":
        row = {"messages": pair.conversation(system_message).messages}
    elif fmt == "reasoning":
        if reasoning_format == "integrated":
            row = {"prompt": pair.question, "completion": f"<think>{pair.reasoning}</think>\n{pair.answer}"}
        else:
            row = {"question": pair.question, "reasoning": pair.reasoning, "answer": pair.answer}
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if pair.scores is not None:
        row["scores"] = pair.scores
    return row


def from_row(row: dict) -> Pair:
    """Read back any single-turn row (the question, answer and reasoning)."""
    return to_conversation(row, detect_shape(row)).first_pair()


REJECT_KINDS = ("request_failed", "unparseable_reply", "dropped_pair")


@dataclass
class Reject:
    """One line of ``rejects.jsonl``: a failed request, an unparseable reply (with its raw text)
    or a dropped pair (with the reason, and for leakage the question it was too close to)."""

    kind: str
    source: str
    split: str
    chunk: int | None = None
    reason: str | None = None
    question: str | None = None
    answer: str | None = None
    error: str | None = None
    raw: str | None = None
    similar_question: str | None = None
    similarity: float | None = None
    scores: dict | None = None  # the judge's scores of a pair (reason "judge" or any judged pair)
    # a dropped conversation's later turns: [{"question", "answer"}, ...] (None for a single-turn pair)
    followups: list | None = None

    def to_dict(self) -> dict:
        """The JSONL record, every text scrubbed of keys (a reply or error body may echo one)."""
        from datakeg.support.secrets import scrub

        out = {k: scrub(v) if isinstance(v, str) else v for k, v in self.__dict__.items() if v is not None}
        if self.followups:
            out["followups"] = [{k: scrub(v) for k, v in t.items()} for t in self.followups]
        return out
