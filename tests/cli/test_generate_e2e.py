"""End-to-end: the real CLI, the real ollama/openai clients, real HTTP to the fake server."""

import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rapidfuzz import fuzz, process

from datakeg.cli import cli
from datakeg.curation.quality import normalize_question
from datakeg.dataset.records import from_row
from datakeg.testing.fake_server import FakeLLMServer

from conftest import ROOT, TESTDOC

SPLITS = ("train", "valid", "test")
KEYS = {
    ("completion", "separate"): {"prompt", "completion"},
    ("chat", "separate"): {"messages"},
    ("reasoning", "separate"): {"question", "reasoning", "answer"},
    ("reasoning", "integrated"): {"prompt", "completion"},
}


def run(args, env=None):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result


def openai_args(srv, src, out, *extra):
    return ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_outputs(out: Path, keys: set[str]) -> dict:
    """Every line parses with the right keys; merged == per-file concatenation; returns manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    for split in SPLITS:
        concatenated = []
        for f in manifest["files"]:
            per_file = out / f"{f['output']}_{split}.jsonl"
            assert per_file.exists(), per_file
            rows = read_jsonl(per_file)
            assert len(rows) == f["delivered"][split]
            concatenated += rows
        merged = read_jsonl(out / f"{split}.jsonl")
        assert merged == concatenated
        for row in merged:
            assert set(row) == keys
        assert len(merged) == manifest["totals"]["delivered"][split]
    return manifest


def assert_no_leakage(out: Path, manifest: dict, threshold: float) -> None:
    for f in manifest["files"]:
        train = [normalize_question(from_row(r).question) for r in read_jsonl(out / f"{f['output']}_train.jsonl")]
        for split in ("valid", "test"):
            for row in read_jsonl(out / f"{f['output']}_{split}.jsonl"):
                q = normalize_question(from_row(row).question)
                hit = process.extractOne(q, train, scorer=fuzz.token_sort_ratio, processor=None) if train else None
                assert hit is None or hit[1] < threshold, (q, hit)


def test_testdoc_openai_completion_exact_counts(server, tmp_path):
    out = tmp_path / "out"
    result = run(openai_args(server, TESTDOC, out))
    assert result.exit_code == 0, result.output
    manifest = check_outputs(out, KEYS[("completion", "separate")])
    t = manifest["totals"]
    assert t["delivered"] == t["target"] and sum(t["target"].values()) > 0
    assert t["requests"] == len(server.requests) and t["failed_requests"] == 0
    assert t["prompt_tokens"] > 0 and manifest["provider"] == "openai" and manifest["model"] == "qwen2.5:3b"
    # both README.md files produce their own outputs
    assert (out / "README_train.jsonl").exists() and (out / "guide/README_train.jsonl").exists()
    # every chunk reached its target; per-file targets follow ceil(chars/1000 * 10)
    for f in manifest["files"]:
        assert all(c["delivered"] == c["target"] for c in f["chunks"])
    # the server saw the schema as structured output, and the chunk in an <excerpt-XXXXXX> (prompts.excerpt_tag)
    body = server.requests[0]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert re.search(r"^<excerpt-[0-9a-f]{6}>$", body["messages"][1]["content"], re.MULTILINE)


def test_corpus_over_ollama_chat_format(corpus, tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer() as srv:
        result = run(["generate", str(corpus), str(out), "--format", "chat", "--system-message", "You are a docs expert.",
                      "-q"], env={"OLLAMA_HOST": srv.ollama_host})
        assert result.exit_code == 0, result.output
        requests = srv.requests
    manifest = check_outputs(out, KEYS[("chat", "separate")])
    t = manifest["totals"]
    assert t["files"] == 8 and t["delivered"] == t["target"]
    assert all(r["path"] == "/api/chat" for r in requests)
    assert all(r["body"]["format"]["required"] == ["pairs"] for r in requests)
    # same base names in different folders keep their own outputs; foo.rst.txt -> foo.rst
    for stem in ("README", "guide/README", "zh/quickstart", "ja/quickstart", "guide/ci.rst"):
        assert (out / f"{stem}_train.jsonl").exists(), stem
    # CJK documents are chunked, asked about and delivered like the others
    cjk = {f["output"]: f for f in manifest["files"] if f["output"] in ("zh/quickstart", "ja/quickstart")}
    assert len(cjk) == 2 and all(f["delivered"] == f["target"] and f["delivered"]["test"] > 0 for f in cjk.values())
    row = read_jsonl(out / "train.jsonl")[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "You are a docs expert."
    assert_no_leakage(out, manifest, 90)
    # prompts are bounded: no request carries the whole 16k-character reference page
    assert len((corpus / "reference.md").read_text()) > 15000
    assert max(len(json.dumps(r["body"], ensure_ascii=False)) for r in requests) < 4000 * 2.5
    # the same exclusions reached the model: valid/test prompts list earlier questions
    assert any("Do not write questions similar" in r["body"]["messages"][1]["content"] for r in requests)


@pytest.mark.parametrize("fmt,rf", [("reasoning", "separate"), ("reasoning", "integrated")])
def test_reasoning_formats(server, tmp_path, fmt, rf):
    out = tmp_path / "out"
    result = run(openai_args(server, TESTDOC, out, "--format", fmt, "--reasoning-format", rf))
    assert result.exit_code == 0, result.output
    check_outputs(out, KEYS[(fmt, rf)])
    rows = read_jsonl(out / "train.jsonl")
    if rf == "integrated":
        assert all(r["completion"].startswith("<think>") and "</think>\n" in r["completion"] for r in rows)
    else:
        assert all(r["reasoning"] for r in rows)


def test_fenced_and_prose_replies_are_parsed(tmp_path):
    with FakeLLMServer(faults=["fence", "prose"]) as srv:
        result = run(openai_args(srv, TESTDOC, tmp_path / "out"))
    assert result.exit_code == 0
    t = check_outputs(tmp_path / "out", KEYS[("completion", "separate")])["totals"]
    assert t["delivered"] == t["target"] and t["unparseable_replies"] == 0


def test_malformed_replies_go_to_rejects_and_are_backfilled(tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer(faults=["malformed:2"]) as srv:
        result = run(openai_args(srv, TESTDOC, out))
    assert result.exit_code == 0
    t = check_outputs(out, KEYS[("completion", "separate")])["totals"]
    rejects = [r for r in read_jsonl(out / "rejects.jsonl") if r["kind"] == "unparseable_reply"]
    assert len(rejects) == t["unparseable_replies"] > 0
    assert all(r["raw"].startswith('{"pairs": [{"question": "Unterminated') for r in rejects)
    assert t["delivered"] == t["target"]  # the retries made up for the broken replies


def test_duplicates_and_ungrounded_are_dropped_and_counted(tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer(faults=["duplicates", "ungrounded"]) as srv:
        result = run(openai_args(srv, TESTDOC, out))
        n_requests = len(srv.requests)
    assert result.exit_code == 0
    manifest = check_outputs(out, KEYS[("completion", "separate")])
    t = manifest["totals"]
    assert t["dropped"]["ungrounded"] == n_requests  # one invented pair per reply
    assert t["dropped"]["duplicate"] == n_requests  # one repeated question per reply
    assert t["delivered"] == t["target"]
    text = "".join((out / f"{s}.jsonl").read_text() for s in SPLITS)
    assert "Zorblax" not in text
    for split in SPLITS:
        qs = [normalize_question(r["prompt"]) for r in read_jsonl(out / f"{split}.jsonl")]
        assert len(qs) == len(set(qs))
    assert_no_leakage(out, manifest, 90)


def test_fewer_pairs_than_asked_are_backfilled(corpus, tmp_path):
    # every reply brings half of what was asked: requests that add pairs do not use up --max-attempts,
    # so even a chunk asked for ~30 pairs gets there
    out = tmp_path / "out"
    with FakeLLMServer(faults=["fewer"]) as srv:
        result = run(openai_args(srv, corpus, out, "--batch-size", "4"))
        asked = [srv.requests]
    assert result.exit_code == 0
    t = check_outputs(out, KEYS[("completion", "separate")])["totals"]
    assert t["delivered"] == t["target"]
    assert t["requests"] == len(asked[0]) > sum(t["target"].values()) / 4


def test_shortfall_is_reported_never_padded(tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer(faults=["fewer"]) as srv:
        result = run(openai_args(srv, TESTDOC, out, "--max-attempts", "0", "--pairs-per-1k", "20"))
    assert result.exit_code == 0
    manifest = check_outputs(out, KEYS[("completion", "separate")])
    t = manifest["totals"]
    assert sum(t["shortfall"].values()) > 0
    assert all(t["delivered"][s] + t["shortfall"][s] == t["target"][s] for s in SPLITS)
    assert all(r["prompt"] and r["completion"] for s in SPLITS for r in read_jsonl(out / f"{s}.jsonl"))


def test_ollama_model_not_pulled(server, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-m", "llama9:70b"],
                                env={"OLLAMA_HOST": server.ollama_host})
    assert result.exit_code == 3
    assert "ollama pull llama9:70b" in result.output and "--provider local" in result.output
    assert server.requests == []  # stopped before any work
    assert not (tmp_path / "o").exists()


def test_ollama_unreachable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o")],
                                env={"OLLAMA_HOST": f"http://127.0.0.1:{port}"})
    assert result.exit_code == 3
    assert "ollama serve" in result.output and "--provider openai" in result.output


def test_openai_unreachable_and_openrouter_needs_key(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai", "--base-url",
                                      f"http://127.0.0.1:{port}/v1"])
    assert result.exit_code == 3 and "not reachable" in result.output
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openrouter", "-m", "x/y"],
                                env={"OPENROUTER_API_KEY": ""})
    assert result.exit_code == 3 and "export OPENROUTER_API_KEY" in result.output


def test_bad_ratios_are_a_clear_error(server, tmp_path):
    result = run(openai_args(server, TESTDOC, tmp_path / "o", "--train-pct", "0.7"))
    assert result.exit_code == 2
    assert "must sum to 1" in result.output
    assert server.requests == []


def test_dry_run_makes_no_calls(server, tmp_path):
    result = run(openai_args(server, TESTDOC, tmp_path / "o", "--dry-run"))
    assert result.exit_code == 0
    assert server.requests == []
    assert "README.md" in result.output and "TOTAL" in result.output and "requests" in result.output
    assert not (tmp_path / "o").exists()


def test_merge_rebuilds_merged_files(server, tmp_path):
    out = tmp_path / "out"
    assert run(openai_args(server, TESTDOC, out)).exit_code == 0
    before = {s: (out / f"{s}.jsonl").read_text() for s in SPLITS}
    for s in SPLITS:
        (out / f"{s}.jsonl").unlink()
    result = run(["merge", str(out)])
    assert result.exit_code == 0 and "train.jsonl" in result.output
    assert {s: (out / f"{s}.jsonl").read_text() for s in SPLITS} == before


def test_bad_files_are_skipped_rest_processed(server, tmp_path):
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / ".hidden").mkdir()
    (src / "good.md").write_text((TESTDOC / "README.md").read_text())
    (src / "binary.md").write_bytes(b"\x00\x01\x02PNG" * 50)
    (src / "empty.txt").write_text("  \n")
    (src / "latin1.txt").write_bytes("Café crème brûlée: la documentation française est encodée en latin-1.\n\n"
                                     "Le café est servi chaud.".encode("latin-1"))
    (src / ".hidden" / "secret.md").write_text("# hidden\n\nnot to be read at all by anyone\n")
    out = src / "out"  # OUT inside SRC
    assert run(openai_args(server, src, out)).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["good.md", "latin1.txt"]
    assert {s["path"]: s["reason"] for s in manifest["skipped"]}.keys() == {"binary.md", "empty.txt"}
    latin = next(f for f in manifest["files"] if f["path"] == "latin1.txt")
    assert latin["encoding"] != "utf-8"
    # a one-pair document lands in whichever split the dataset needs: look in all three
    assert "Café" in "".join((out / f"latin1_{s}.jsonl").read_text(encoding="utf-8") for s in SPLITS)
    # a second run does not read its own previous output
    assert run(openai_args(server, src, out)).exit_code == 0
    assert [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]] == ["good.md", "latin1.txt"]


def test_providers_command_and_module_entry_point(server):
    result = run(["providers", "--base-url", server.url], env={"OLLAMA_HOST": server.ollama_host,
                                                               "OPENROUTER_API_KEY": ""})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(l.startswith("ok") and "ollama" in l for l in lines)
    assert any(l.startswith("ok") and "openai" in l for l in lines)
    assert any(l.startswith("--") and "openrouter" in l for l in lines)
    proc = subprocess.run([sys.executable, "-m", "datakeg", "generate", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ})
    assert proc.returncode == 0 and "Examples:" in proc.stdout and "qwen2.5:3b" in proc.stdout


def test_manifest_never_holds_the_key(server, tmp_path):
    out = tmp_path / "out"
    secret = "sk-test-SECRET-0123456789"
    result = run(openai_args(server, TESTDOC, out), env={"OPENAI_API_KEY": secret})
    assert result.exit_code == 0
    for p in out.rglob("*"):
        if p.is_file():
            assert secret not in p.read_text(encoding="utf-8")
    assert secret not in result.output
