"""Bad replies and refused keys, through the real CLI, the real openai/ollama clients and real HTTP.

A reply that is not a usable chat completion (HTML, broken JSON, an error object, no choices, no
content, oversized) is a failed request: counted, listed in rejects.jsonl, never journaled, so a
rerun asks for it again. A refused key (401/403) stops the run at once (exit 3) and says which
variable to fix. No API key ever reaches OUT or the terminal.
"""

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.generation.journal import JOURNAL_DIR, Journal
from datakeg.testing.fake_server import FakeLLMServer

from conftest import TESTDOC

SECRET = "sk-proj-DATAKEG-TEST-SECRET-7f3a9c1e5b"


def invoke(args, env=None):
    return CliRunner().invoke(cli, args, env=env)


def generate(srv, out, *extra, provider="openai", env=None, quiet=True):
    args = ["generate", str(TESTDOC), str(out), *(["-q"] if quiet else []), *extra]
    if provider == "openai":
        args += ["-p", "openai", "--base-url", srv.url]
        env = {"OPENAI_API_KEY": "", **(env or {})}
    else:
        env = {"OLLAMA_HOST": srv.ollama_host, "OLLAMA_API_KEY": "", **(env or {})}
    return invoke(args, env)


def text_of(result) -> str:
    """Everything the command printed (stdout and stderr, whatever click's version mixes)."""
    out = result.output
    try:
        err = result.stderr
    except ValueError:  # stderr not captured separately
        err = ""
    return out + ("" if err in out else err)


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.jsonl"))
            if JOURNAL_DIR not in p.parts}


def rejects(out) -> list[dict]:
    path = out / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def totals(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["totals"]


def key(body) -> str:
    return json.dumps(body["messages"], sort_keys=True)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """One uninterrupted run against a cooperative server, for each provider: its outputs and totals."""
    runs = {}
    for provider in ("openai", "ollama"):
        out = tmp_path_factory.mktemp(f"healthy-{provider}")
        with FakeLLMServer() as srv:
            result = generate(srv, out, "--max-attempts", "0", provider=provider)
        assert result.exit_code == 0, text_of(result)
        runs[provider] = (outputs(out), totals(out))
    return runs


@pytest.mark.parametrize("provider,fault", [
    ("openai", "html200:3"), ("openai", "notjson200:3"), ("openai", "error200:3"), ("openai", "emptychoices:3"),
    ("openai", "nullcontent:3"), ("openai", "huge:3"),
    ("ollama", "html200:3"), ("ollama", "error200:3"), ("ollama", "emptychoices:3"), ("ollama", "nullcontent:3"),
])
def test_bad_200_replies_are_failed_requests_never_journaled_and_rerun_asks_again(healthy, tmp_path, provider,
                                                                                   fault):
    out = tmp_path / "o"
    with FakeLLMServer(faults=[fault]) as srv:
        result = generate(srv, out, "--max-attempts", "0", provider=provider)
        sent = srv.requests
    printed = text_of(result)
    assert result.exit_code in (0, 4), printed
    assert "Traceback" not in printed
    failed_bodies = [key(r["body"]) for r in sent if r["faults"]]
    answered_bodies = {key(r["body"]) for r in sent if not r["faults"]}
    assert failed_bodies, "the fault never hit: the test proves nothing"
    t = totals(out)
    # every bad reply is a failed request, counted and listed with what was wrong
    assert t["failed_requests"] == len(failed_bodies) and t["unparseable_replies"] == 0
    failed = [r for r in rejects(out) if r["kind"] == "request_failed"]
    assert len(failed) == len(failed_bodies)
    assert all(r["error"] and len(r["error"]) < 2000 for r in failed)  # the huge reply is not copied in
    # only the good replies were journaled
    assert len(Journal(out)) == t["requests"] - t["failed_requests"]
    # a rerun against a healthy server asks again for the failed work only, and meets the targets
    with FakeLLMServer() as srv:
        again = generate(srv, out, "--max-attempts", "0", provider=provider)
        resent = [key(r["body"]) for r in srv.requests]
    assert again.exit_code == 0, text_of(again)
    # nothing answered in the first run is paid for again (an identical prompt that also failed
    # once there may be asked again as often as it failed)
    failed_count, resent_count = Counter(failed_bodies), Counter(resent)
    assert all(resent_count[b] <= failed_count[b] for b in resent_count if b in answered_bodies), \
        "a request answered in the first run was sent again"
    # a failed first train request of a chunk is asked again word for word (valid/test requests
    # change: their avoid lists now hold the train questions the first run could not get)
    first_asks = [b for b in failed_bodies if "Do not write questions similar" not in b and "train set" in b]
    assert set(first_asks) <= set(resent)
    t2 = totals(out)
    healthy_outputs, healthy_totals = healthy[provider]
    assert t2["delivered"] == t2["target"]
    assert t2["requests"] + t2["replayed_from_journal"] == healthy_totals["requests"]
    assert outputs(out) == healthy_outputs


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_good_reply_labelled_text_plain_is_read_like_any_other(healthy, tmp_path, provider):
    """Some proxies send JSON as text/plain; the reply is the model's and must not be lost."""
    out = tmp_path / "o"
    with FakeLLMServer(faults=["textplain200:2"]) as srv:
        result = generate(srv, out, "--max-attempts", "0", provider=provider)
        hit = [r for r in srv.requests if r["faults"]]
    assert result.exit_code == 0, text_of(result)
    assert hit, "the fault never hit: the test proves nothing"
    assert totals(out)["failed_requests"] == 0
    assert outputs(out) == healthy[provider][0]


@pytest.mark.parametrize("fault", ["html200:2", "emptychoices:2", "error200:2"])
def test_bad_replies_are_backfilled_within_the_run(tmp_path, fault):
    out = tmp_path / "o"
    with FakeLLMServer(faults=[fault]) as srv:
        result = generate(srv, out)
    assert result.exit_code == 0, text_of(result)
    t = totals(out)
    assert t["failed_requests"] > 0 and t["delivered"] == t["target"]


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_on_chat_stops_the_run_at_once_with_exit_3(tmp_path, provider, status):
    env = {"OPENAI_API_KEY": SECRET} if provider == "openai" else {"OLLAMA_API_KEY": SECRET}
    with FakeLLMServer(faults=[f"http{status}"]) as srv:
        result = generate(srv, tmp_path / "o", "-c", "2", provider=provider, env=env)
        chat_requests = len(srv.requests)
    printed = text_of(result)
    assert result.exit_code == 3, printed
    assert "Traceback" not in printed
    assert f"HTTP {status}" in printed
    assert ("OPENAI_API_KEY" if provider == "openai" else "OLLAMA_API_KEY") in printed
    assert chat_requests <= 2  # one per request slot at most, not one per chunk (TESTDOC has ~15 requests)
    assert SECRET not in printed
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and f"HTTP {status}" in manifest["stop_reason"]  # never "complete"
    assert SECRET not in (tmp_path / "o" / "manifest.json").read_text()


def test_refused_key_on_chat_names_the_variable_when_unset(tmp_path):
    with FakeLLMServer(faults=["http401"]) as srv:
        result = generate(srv, tmp_path / "o")
    assert result.exit_code == 3
    assert "OPENAI_API_KEY is not set" in text_of(result)


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_at_check_exits_3_before_any_chat(tmp_path, provider, status):
    env = {"OPENAI_API_KEY": SECRET} if provider == "openai" else {"OLLAMA_API_KEY": SECRET}
    with FakeLLMServer(api_key="the-right-key-0000", auth_status=status) as srv:
        result = generate(srv, tmp_path / "o", provider=provider, env=env)
        assert srv.requests == []
    printed = text_of(result)
    assert result.exit_code == 3, printed
    assert "Traceback" not in printed
    assert ("OPENAI_API_KEY" if provider == "openai" else "OLLAMA_API_KEY") in printed
    assert SECRET not in printed
    # the right key works
    with FakeLLMServer(api_key="the-right-key-0000") as srv:
        ok = generate(srv, tmp_path / "ok", provider=provider,
                      env={("OPENAI_API_KEY" if provider == "openai" else "OLLAMA_API_KEY"): "the-right-key-0000"})
    assert ok.exit_code == 0, text_of(ok)


def test_providers_command_reports_a_refused_key(tmp_path):
    with FakeLLMServer(api_key="the-right-key-0000") as srv:
        result = invoke(["providers", "--base-url", srv.url],
                        env={"OPENAI_API_KEY": SECRET, "OLLAMA_HOST": srv.ollama_host, "OPENROUTER_API_KEY": ""})
    printed = text_of(result)
    assert "Traceback" not in printed and SECRET not in printed
    assert "rejected the API key" in printed


def test_base_url_pointing_at_a_web_page_is_a_clear_error(tmp_path):
    """GET /models answering an HTML page (a wrong --base-url) is ProviderUnavailable, not a traceback."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            data = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        result = invoke(["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai", "--base-url",
                         f"http://127.0.0.1:{httpd.server_address[1]}", "-q"], env={"OPENAI_API_KEY": ""})
    finally:
        httpd.shutdown()
        httpd.server_close()
    printed = text_of(result)
    assert result.exit_code == 3, printed
    assert "Traceback" not in printed and "/v1" in printed


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_error_body_echoing_the_key_leaks_it_nowhere(tmp_path, provider):
    out = tmp_path / "o"
    env = {"OPENAI_API_KEY": SECRET} if provider == "openai" else {"OLLAMA_API_KEY": SECRET}
    with FakeLLMServer(faults=["echoauth:3"]) as srv:
        result = generate(srv, out, "--max-attempts", "0", provider=provider, env=env)
        echoed = [r for r in srv.requests if r["faults"]]
    printed = text_of(result)
    assert echoed and result.exit_code in (0, 4), printed
    failed = [r for r in rejects(out) if r["kind"] == "request_failed"]
    assert len(failed) == len(echoed)
    assert all("400" in r["error"] and "Bearer ***" in r["error"] for r in failed)
    for p in out.rglob("*"):
        if p.is_file():
            assert SECRET not in p.read_text(encoding="utf-8", errors="replace"), p
    assert SECRET not in printed
    # not quiet: the warnings printed for each failed request hold no key either
    with FakeLLMServer(faults=["echoauth:3"]) as srv:
        loud = generate(srv, tmp_path / "loud", "--max-attempts", "0", "-c", "1", provider=provider, env=env,
                        quiet=False)
    assert "request failed" in text_of(loud) and SECRET not in text_of(loud)
