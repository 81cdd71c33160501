"""Prompts sent to the model. ``PROMPT_VERSION`` changes whenever the wording changes."""

from __future__ import annotations

from datakeg.records import Pair

PROMPT_VERSION = "1"

SYSTEM_PROMPT = (
    "You write question-answer pairs used to fine-tune a small model that must answer questions about "
    "a documentation set from memory, without seeing the documentation. You only use facts stated in "
    "the excerpt you are given. You reply with JSON only."
)

_LANG_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "cs": "Czech", "sv": "Swedish", "da": "Danish", "no": "Norwegian",
    "nb": "Norwegian", "fi": "Finnish", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "el": "Greek",
    "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ar": "Arabic", "he": "Hebrew", "hi": "Hindi",
    "id": "Indonesian", "vi": "Vietnamese", "th": "Thai", "hu": "Hungarian", "ro": "Romanian",
}


def detect_language(text: str) -> str:
    """Name of the language ``text`` is written in (py3langid; English for too little text)."""
    sample = text[:20000]
    if sum(ch.isalpha() for ch in sample) < 40:
        return "English"
    import py3langid

    code, _ = py3langid.classify(sample)
    return _LANG_NAMES.get(code, code)


def build_messages(*, source: str, breadcrumb: str, chunk: str, count: int, split: str, language: str,
                   avoid: list[str], reasoning: bool) -> list[dict]:
    fields = '"question", "reasoning", "answer"' if reasoning else '"question", "answer"'
    example = (
        '{"pairs": [{"question": "...", "reasoning": "...", "answer": "..."}]}'
        if reasoning else '{"pairs": [{"question": "...", "answer": "..."}]}'
    )
    lines = [
        f"Document: {source}",
        f"Section: {breadcrumb or '(top of the document)'}",
        "",
        "<excerpt>",
        chunk.strip(),
        "</excerpt>",
        "",
        f"Write exactly {count} new question-answer pair{'s' if count != 1 else ''} about the excerpt "
        f"above (for the {split} set).",
        "Rules:",
        "- Each question must be answerable from the excerpt alone and must make sense on its own: "
        "name the tool, command or feature it is about; never say \"the excerpt\" or \"this section\".",
        "- Each answer must be correct according to the excerpt, complete, and use the excerpt's own "
        "terms (1-3 sentences; include a command or code line when the excerpt gives one).",
        "- Every pair covers a different fact.",
    ]
    if reasoning:
        lines.append("- \"reasoning\" explains briefly, step by step, how the excerpt leads to the answer.")
    lines.append(
        f"- Write every question{', reasoning' if reasoning else ''} and answer in {language}, "
        f"even where the excerpt contains English code or terms. Do not switch to another language."
    )
    if avoid:
        lines += ["", "Do not write questions similar to these existing ones:"]
        lines += [f"- {q}" for q in avoid]
    lines += ["", f"Reply with only a JSON object with the fields {fields}, like {example}. Language: {language}."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def avoid_list(same_chunk: list[Pair], elsewhere: list[str], chunk: str, cap: int) -> list[str]:
    """Questions to exclude, at most ``cap``: the latest of this chunk (up to two thirds of the cap),
    then the most similar ones from the rest of the document."""
    from datakeg.quality import most_similar

    own_cap = cap - cap // 3
    own = [p.question for p in same_chunk][-own_cap:] if own_cap > 0 else []
    return own + most_similar(chunk, elsewhere, cap - len(own))
