"""How a conversation becomes tokens, the same way for training, for eval and (in Go) for Ollama.

* A tokenizer without a chat template (a base model) gets ChatML (DEFAULT_CHAT_TEMPLATE).
* A template that refuses a system turn (Gemma, Mistral v0.1/v0.2 raise "System role not
  supported") gets the system message at the start of the first user turn, followed by a blank
  line: what Gemma 3's own template does, and what the Ollama TEMPLATE reproduces.
* The BOS token is prepended when the tokenizer adds one to plain text (Gemma, Llama) and the
  template has not written it already; a tokenizer without BOS (Qwen) gets none. Gemma base models
  answer far worse without it (loss 4.61 vs 3.33 on the bundled model).
* Templates that print a date (Llama 3.1+) get a fixed ``date_string`` so that training, eval and
  the Modelfile render the same text whatever the day.
"""

from __future__ import annotations

# Used only when the base model's tokenizer has no chat template (a base model): ChatML.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DATE_STRING = "26 Jul 2024"  # the default Llama 3.1's own template uses; fixed so renders never drift
END_OF_TURN_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<|im_start|>",
                       "<start_of_turn>", "<|start_header_id|>", "[INST]")


def ensure_chat_template(tokenizer) -> str:
    """The tokenizer's chat template, set to ChatML first when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer.chat_template


def fold_system(messages: list[dict]) -> list[dict]:
    """The system message moved to the start of the first user turn ("system\\n\\nuser")."""
    if not messages or messages[0]["role"] != "system":
        return [dict(m) for m in messages]
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}] + rest


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text for MESSAGES, with the system turn folded in when the template
    refuses one."""
    ensure_chat_template(tokenizer)
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt, "date_string": DATE_STRING}
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception:  # noqa: BLE001  jinja2 TemplateError from raise_exception(): "System role not supported",
        # or Mistral's "roles must alternate" tripped by the system turn
        if not messages or messages[0]["role"] != "system":
            raise
        try:
            return tokenizer.apply_chat_template(fold_system(messages), **kwargs)
        except Exception:  # noqa: BLE001, S110  the folded form failed too: report the original error
            pass
        raise


def wants_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before plain text (its own add_bos_token behaviour)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def text_ids(tokenizer, text: str, first: bool = True) -> list[int]:
    """Token ids of rendered template TEXT; with FIRST, BOS is prepended when the tokenizer wants
    one and the text does not already start with it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if first and wants_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def stop_markers(tokenizer) -> list[str]:
    """End-of-turn markers that appear in the tokenizer's chat template (they end an answer even
    when they are plain text for this tokenizer, as ChatML's are for Gemma)."""
    template = ensure_chat_template(tokenizer)
    return [m for m in END_OF_TURN_MARKERS if m in template]
