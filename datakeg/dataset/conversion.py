"""Convert datasets between row shapes and render them in models' exact chat templates.

Rendered templates reproduce, byte for byte, what the model's official Hugging Face chat template
produces for the same messages with ``add_generation_prompt=False`` (the training form), bos/eos
included. The official template strings are kept as test fixtures (tests/fixtures) and rendered
with jinja2 in the tests; this module does not copy them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datakeg.dataset.jsonl import read_rows
from datakeg.dataset.records import (
    SHAPES,
    Conversation,
    ShapeError,
    detect_shape,
    to_conversation,
)
from datakeg.errors import DatakegError

DETECT_SAMPLE = 200  # rows looked at to detect a file's shape


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    name: str
    description: str
    example: str
    render: Callable[[Conversation], dict]
    system: str = "kept"  # kept | merged (into the first user turn) | dropped
    reasoning: bool = False  # keeps the reasoning
    multi_turn: bool = True


def _merge_system(conv: Conversation) -> list[dict]:
    """Turns without a system message: the system text opens the first user turn."""
    turns = [dict(m) for m in conv.turns]
    if conv.system:
        turns[0]["content"] = f"{conv.system}\n\n{turns[0]['content']}"
    return turns


def _chatml(conv: Conversation) -> dict:
    return {"text": "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conv.messages)}


def _llama3(conv: Conversation) -> dict:
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                   for m in conv.messages)
    return {"text": "<|begin_of_text|>" + body}


def _mistral(conv: Conversation) -> dict:
    out = "<s>"
    for m in _merge_system(conv):
        out += f"[INST] {m['content']} [/INST]" if m["role"] == "user" else f"{m['content']}</s>"
    return {"text": out}


def _gemma(conv: Conversation) -> dict:
    out = "<bos>"
    for m in _merge_system(conv):
        role = "model" if m["role"] == "assistant" else "user"
        out += f"<start_of_turn>{role}\n{m['content'].strip()}<end_of_turn>\n"
    return {"text": out}


def _phi3(conv: Conversation) -> dict:
    return {"text": "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in conv.messages) + "<|endoftext|>"}


def _zephyr(conv: Conversation) -> dict:
    return {"text": "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in conv.messages)}


def _deepseek_r1(conv: Conversation) -> dict:
    out = "<｜begin▁of▁sentence｜>" + (conv.system or "")
    turns = conv.turns
    for i, m in enumerate(turns):
        if m["role"] == "user":
            out += f"<｜User｜>{m['content']}"
        else:
            think = f"<think>\n{conv.reasoning}\n</think>\n\n" if conv.reasoning and i == len(turns) - 1 else ""
            out += f"<｜Assistant｜>{think}{m['content']}<｜end▁of▁sentence｜>"
    return {"text": out}


def _messages(conv: Conversation) -> dict:
    return {"messages": [dict(m) for m in conv.messages]}


def _sharegpt(conv: Conversation) -> dict:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv.messages]}


def _completion(conv: Conversation) -> dict:
    pair = conv.first_pair()
    return {"prompt": pair.question, "completion": pair.answer}


def _alpaca(conv: Conversation) -> dict:
    pair = conv.first_pair()
    return {"instruction": pair.question, "input": "", "output": pair.answer}


def _reasoning(conv: Conversation) -> dict:
    pair = conv.first_pair()
    return {"question": pair.question, "reasoning": pair.reasoning, "answer": pair.answer}


def _text(conv: Conversation) -> dict:
    lines = [conv.system] if conv.system else []
    for m in conv.turns:
        lines.append(f"{'Question' if m['role'] == 'user' else 'Answer'}: {m['content']}")
    return {"text": "\n".join(lines)}


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("messages", 'OpenAI / mlx-lm / TRL chat rows {"messages": [...]}',
           '{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}', _messages),
    Target("completion", 'mlx-lm / TRL prompt-completion rows {"prompt", "completion"}',
           '{"prompt": "Q", "completion": "A"}', _completion, system="dropped", multi_turn=False),
    Target("alpaca", 'Alpaca rows {"instruction", "input", "output"} (Axolotl, LLaMA-Factory, Unsloth)',
           '{"instruction": "Q", "input": "", "output": "A"}', _alpaca, system="dropped", multi_turn=False),
    Target("sharegpt", 'ShareGPT rows {"conversations": [{"from", "value"}]} (Axolotl, LLaMA-Factory)',
           '{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}', _sharegpt),
    Target("reasoning", 'datakeg reasoning rows {"question", "reasoning", "answer"}',
           '{"question": "Q", "reasoning": "R", "answer": "A"}', _reasoning, system="dropped", reasoning=True,
           multi_turn=False),
    Target("text", 'plain {"text": "Question: ...\\nAnswer: ..."} for nanoGPT-style trainers',
           '{"text": "Question: Q\\nAnswer: A"}', _text),
    Target("chatml", "ChatML text (Qwen, OpenHermes, many others): <|im_start|>role ... <|im_end|>",
           '{"text": "<|im_start|>user\\nQ<|im_end|>\\n<|im_start|>assistant\\nA<|im_end|>\\n"}', _chatml),
    Target("llama3", "Llama 3 instruct text: <|begin_of_text|><|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
           '{"text": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nQ<|eot_id|>'
           '<|start_header_id|>assistant<|end_header_id|>\\n\\nA<|eot_id|>"}', _llama3),
    Target("mistral", "Mistral / Mixtral instruct text: <s>[INST] Q [/INST]A</s> (system merged into the first turn)",
           '{"text": "<s>[INST] Q [/INST]A</s>"}', _mistral, system="merged"),
    Target("gemma", "Gemma 2/3 instruct text: <bos><start_of_turn>user ... <end_of_turn> (system merged)",
           '{"text": "<bos><start_of_turn>user\\nQ<end_of_turn>\\n<start_of_turn>model\\nA<end_of_turn>\\n"}',
           _gemma, system="merged"),
    Target("phi3", "Phi-3 instruct text: <|user|>\\nQ<|end|>\\n<|assistant|>\\nA<|end|>\\n<|endoftext|>",
           '{"text": "<|user|>\\nQ<|end|>\\n<|assistant|>\\nA<|end|>\\n<|endoftext|>"}', _phi3),
    Target("zephyr", "Zephyr / TinyLlama-Chat text: <|system|>, <|user|>, <|assistant|> turns ending in </s>",
           '{"text": "<|user|>\\nQ</s>\\n<|assistant|>\\nA</s>\\n"}', _zephyr),
    Target("deepseek-r1", "DeepSeek-R1(-Distill) text with the reasoning kept in <think> before the answer",
           '{"text": "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>\\nR\\n</think>\\n\\nA<｜end▁of▁sentence｜>"}',
           _deepseek_r1, reasoning=True),
)}


def custom_target(path: Path) -> Target:
    """A Jinja2 template file as target. Variables: messages (list of {role, content}), system,
    question, answer, reasoning. Rendered like Hugging Face chat templates (trim_blocks,
    lstrip_blocks); each row becomes {"text": <rendered>}."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        template = env.from_string(Path(path).read_text(encoding="utf-8"))
    except (OSError, TemplateError) as exc:
        raise DatakegError(f"cannot load the custom template {path}: {exc}",
                           "Check the file; see `datakeg convert --help` for the variables it can use.") from None

    def render(conv: Conversation) -> dict:
        pair = conv.first_pair()
        return {"text": template.render(messages=conv.messages, system=conv.system or "", question=pair.question,
                                        answer=pair.answer, reasoning=conv.reasoning)}

    return Target(f"custom:{Path(path).name}", "custom Jinja2 template", "", render, reasoning=True)


# --------------------------------------------------------------------------- reading
def iter_rows(path: Path) -> Iterator[tuple[int, object | None, str | None]]:
    """(line number, decoded value or None, error or None) for each non-blank line of a JSONL
    file, streamed (``datakeg.dataset.jsonl.read_rows``: lines split on "\\n" only); a JSON array file
    (first character "[") is read whole, one element per row."""
    return read_rows(path, allow_array=True)


def detect_file_shape(path: Path) -> tuple[str | None, Counter]:
    """The dominant shape among the first DETECT_SAMPLE rows, and the counts seen."""
    counts: Counter = Counter()
    for n, (_, value, error) in enumerate(iter_rows(path)):
        if n >= DETECT_SAMPLE:
            break
        counts[detect_shape(value) if error is None else "invalid"] += 1
    shapes = [(s, c) for s, c in counts.most_common() if s not in ("invalid", None)]
    return (shapes[0][0] if shapes else None), counts


@dataclass
class ConvertReport:
    source_shape: str
    detected: str
    rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def iter_conversations(src: Path, shape: str, report: ConvertReport, system_message: str | None = None):
    """The rows of ``src`` read as ``shape``, as conversations (``system_message`` added where a row
    has none); a line that cannot be read is recorded in ``report.skipped`` and left out."""
    for lineno, value, error in iter_rows(src):
        if error:
            report.skipped.append((lineno, error))
            continue
        try:
            conv = to_conversation(value, shape)
        except ShapeError as exc:
            report.skipped.append((lineno, str(exc)))
            continue
        if system_message and not conv.system:
            conv.messages.insert(0, {"role": "system", "content": system_message})
        yield conv


def convert_file(src: Path, dst: Path, target: Target, source_shape: str | None = None,
                 system_message: str | None = None) -> ConvertReport:
    """Stream ``src`` into ``dst`` (atomically). Bad rows are skipped and reported, never guessed."""
    from datakeg.dataset.atomic import atomic_write_text
    from datakeg.dataset.jsonl import dumps_line

    detected, counts = detect_file_shape(src)
    if not counts:  # an empty file (a split that got no pairs): an empty output, not an error
        atomic_write_text(dst, [])
        return ConvertReport(source_shape or "-", "none (the file holds no rows)")
    sample = ", ".join(f"{k or 'unknown'} {v}" for k, v in counts.most_common())
    shape = source_shape or detected
    if shape is None:
        raise DatakegError(f"{src}: no known row shape found (looked at {sum(counts.values())} rows: {sample})",
                           f"Rows must be one of: {', '.join(SHAPES)}; or pass --source-format.")
    if shape == "text":
        raise DatakegError(f'{src}: plain {{"text"}} rows hold no question/answer structure to convert.')
    looked = sum(counts.values())
    mixed = f": {sample}" if len(counts) > 1 else ""
    report = ConvertReport(shape, f"{detected} (detected from the first {looked} row{'s' * (looked != 1)}{mixed})"
                           if not source_shape else f"{shape} (set by --source-format)")
    lost: set[str] = set()

    def rows():
        for conv in iter_conversations(src, shape, report, system_message):
            if conv.system and target.system != "kept":
                lost.add(f"the system message is {target.system}" + (" into the first user turn" if
                                                                       target.system == "merged" else ""))
            if conv.reasoning and not target.reasoning:
                lost.add("reasoning is dropped (target has no place for it)")
            if conv.multi_turn and not target.multi_turn:
                lost.add("only the first user/assistant exchange of multi-turn rows is kept")
            report.rows += 1
            yield dumps_line(target.render(conv)) + "\n"

    atomic_write_text(dst, rows())
    report.notes = sorted(lost)
    return report
