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


# -- the dialects of real servers (issue 23): format negotiation, cut-off replies, a server that
#    is busy, gone or serving another model ------------------------------------------------------

def run(srv, src, out, *extra, env=None):
    return invoke(["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, *extra],
                  {"OPENAI_API_KEY": "", **(env or {})})


def journal_texts(out) -> list[str]:
    path = out / JOURNAL_DIR / "journal.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.mark.parametrize("dialect,mode,refused_status", [
    ("llama-cpp-python", "json_object+schema", 500),  # refuses json_schema with HTTP 500, as llama-cpp-python 0.3.36
    ("no-response-format", "none", 400),  # refuses every response_format with HTTP 400
])
def test_structured_output_is_negotiated_without_failed_requests_or_journal_keys(healthy, tmp_path, dialect, mode,
                                                                                 refused_status):
    out = tmp_path / "o"
    with FakeLLMServer(dialect=dialect) as srv:
        result = run(srv, TESTDOC, out, "-c", "2", "-m", "fake-model")
        sent = list(srv.requests)
    printed = text_of(result)
    assert result.exit_code == 0, printed
    refused = [r for r in sent if r.get("status")]
    assert refused and {r["status"] for r in refused} == {refused_status}
    # a refusal costs one request of each mode that is refused (two in flight at -c 2), never a retry
    assert len(refused) <= 2 * (3 if mode == "none" else 1)
    answered = [r for r in sent if not r.get("status")]
    formats = {json.dumps(r["body"].get("response_format", {}).get("type")) for r in answered}
    assert formats == ({'"json_object"'} if mode == "json_object+schema" else {"null"})
    if mode == "json_object+schema":
        assert all(r["body"]["response_format"]["schema"]["required"] == ["pairs"] for r in answered)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["structured_output"] == mode
    t = manifest["totals"]
    assert t["failed_requests"] == 0 and t["delivered"] == t["target"]
    assert t["requests"] == len(answered)  # the refused tries are no requests of the run
    # said once, not once per request
    assert printed.count("refused json_schema") == 1 and f"using {mode}" in printed
    # the negotiated mode is in no journal key: the same run against a server that accepts json_schema
    # replays everything, and the outputs are the ones a cooperative server gives
    with FakeLLMServer() as srv:
        again = run(srv, TESTDOC, out, "-c", "2", "-m", "fake-model")
        assert srv.requests == []
    assert again.exit_code == 0, text_of(again)
    assert outputs(out) == healthy["openai"][0]


def test_forced_schema_on_a_server_that_refuses_it_fails_and_says_why(tmp_path):
    with FakeLLMServer(dialect="llama-cpp-python") as srv:
        result = run(srv, TESTDOC / "guide" / "faq.txt", tmp_path / "o", "--structured", "schema", "--max-retries", "0",
                     "--max-attempts", "0")
    printed = text_of(result)
    assert result.exit_code == 4, printed
    assert "HTTP 500" in " ".join(r["error"] for r in rejects(tmp_path / "o"))
    assert "--structured" in " ".join(r["error"] for r in rejects(tmp_path / "o"))


def test_eval_judge_negotiates_the_format_too(tmp_path):
    test = tmp_path / "test.jsonl"
    rows = [{"prompt": "What does --json do?", "completion": "It prints JSON."},
            {"prompt": "Which Python?", "completion": "Python 3.10."}]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeLLMServer(dialect="llama-cpp-python", answers={rows[0]["prompt"]: "It prints JSON."}) as srv:
        result = invoke(["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m", "fake-model",
                         "--judge-model", "fake-model", "-c", "1", "--report", str(tmp_path / "rep")],
                        {"OPENAI_API_KEY": ""})
        refused = [r for r in srv.requests if r.get("status")]
    printed = text_of(result)
    assert result.exit_code == 0, printed
    report = json.loads((tmp_path / "rep.json").read_text())["reports"][0]
    assert report["summary"]["failed"] == 0 and report["summary"]["judge_failed"] == 0
    assert [i["judge"] for i in report["items"]] == [1.0, 0.0]  # the fake judge: 5/5, then 0/5
    assert len(refused) == 1 and printed.count("using json_object+schema") == 1
    # --structured none: the judge's prompt alone, parsed tolerantly
    with FakeLLMServer(dialect="llama-cpp-python") as srv:
        plain = invoke(["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m", "fake-model",
                        "--judge-model", "fake-model", "--structured", "none", "--report", str(tmp_path / "rep2")],
                       {"OPENAI_API_KEY": ""})
        assert all("response_format" not in r["body"] for r in srv.requests)
    assert plain.exit_code == 0, text_of(plain)


def test_cut_off_replies_are_never_final_and_are_asked_again_for_fewer_pairs(small_testdoc, tmp_path):
    src = small_testdoc / "guide"  # README.md and faq.txt: prompts of about 480-590 tokens here
    out = tmp_path / "o"
    with FakeLLMServer(n_ctx=650) as srv:
        result = run(srv, src, out, "-c", "1")
        sent = [r["body"] for r in srv.requests]
    assert result.exit_code == 0, text_of(result)
    t = totals(out)
    assert t["truncated_replies"] >= 1 and t["failed_requests"] == 0
    assert t["delivered"] == t["target"]  # asking for fewer pairs got there
    cut = [r for r in rejects(out) if r["kind"] == "truncated_reply"]
    assert len(cut) == t["truncated_replies"] and all(r["reason"] == "finish_reason: length" and r["raw"] for r in cut)
    # a cut-off reply is not in the journal: only the complete ones are
    texts = journal_texts(out)
    assert len(texts) == t["requests"] - t["truncated_replies"]
    assert not any(r["raw"] in texts for r in cut)
    # the request after a cut-off one asks for fewer pairs (the count is in the prompt)
    counts = [int(m) for b in sent for m in __import__("re").findall(r"Write exactly (\d+) new", b["messages"][-1]["content"])]
    assert min(counts) < max(counts)
    # a rerun replays the complete replies and asks again for the cut-off ones: never replayed
    with FakeLLMServer(n_ctx=650) as srv:
        again = run(srv, src, out, "-c", "1")
        assert len(srv.requests) == t["truncated_replies"]
    assert again.exit_code == 0
    assert totals(out)["replayed_from_journal"] == t["requests"] - t["truncated_replies"]


def test_a_prompt_over_the_context_window_stops_with_one_line_naming_the_numbers(tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer(n_ctx=600) as srv:  # ci.rst.txt's prompt is about 930 tokens here
        result = run(srv, TESTDOC / "guide", out, "-c", "1")
        sent = len(srv.requests)
    printed = text_of(result)
    assert result.exit_code == 2, printed
    line = next(x for x in printed.splitlines() if x.startswith("Error:"))
    assert "context window is 600 tokens" in line and "--chunk-size" in line
    assert __import__("re").search(r"A prompt is \d+ tokens", line)
    assert "Traceback" not in printed
    assert sent <= 2  # not retried, not split and asked again for every chunk
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "600 tokens" in manifest["stop_reason"]
    # with smaller chunks the prompts fit (the same server)
    with FakeLLMServer(n_ctx=600) as srv:
        fits = run(srv, TESTDOC / "guide" / "faq.txt", tmp_path / "o2", "--chunk-size", "300",)
    assert fits.exit_code in (0, 4) and "context window" not in text_of(fits)


def test_busy_server_is_waited_for_and_a_dead_port_is_reported_as_not_listening(tmp_path):
    import socket

    src = TESTDOC / "guide" / "faq.txt"
    # GET /models hangs (a llama.cpp server busy with another client's completion)
    with FakeLLMServer(models_delay=3, models_delay_times=1) as srv:
        busy = run(srv, src, tmp_path / "busy", "--request-timeout", "1", "-q")
    assert busy.exit_code == 3
    assert "busy" in text_of(busy) and "--wait-for-model" in text_of(busy) and "not reachable" not in text_of(busy)
    with FakeLLMServer(models_delay=3, models_delay_times=1) as srv:
        waited = run(srv, src, tmp_path / "waited", "--request-timeout", "1", "--wait-for-model", "20")
    assert waited.exit_code == 0, text_of(waited)
    assert "waiting up to 20s" in text_of(waited) and totals(tmp_path / "waited")["failed_requests"] == 0
    # nothing listening: a port just closed
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    dead = invoke(["generate", str(src), str(tmp_path / "dead"), "-p", "openai", "--base-url",
                   f"http://127.0.0.1:{port}/v1"], {"OPENAI_API_KEY": ""})
    assert dead.exit_code == 3 and "not reachable" in text_of(dead) and "busy" not in text_of(dead)


def test_a_server_that_dies_mid_run_stops_it_in_seconds_with_exit_4(tmp_path):
    import time

    out = tmp_path / "o"
    with FakeLLMServer(die_after=4) as srv:
        started = time.monotonic()
        result = run(srv, TESTDOC, out, "-c", "2", "--max-retries", "2")
        took = time.monotonic() - started
    printed = text_of(result)
    assert result.exit_code == 4, printed
    assert "stopped answering" in printed and "Traceback" not in printed
    # without the breaker every one of ~30 remaining requests goes through 1 + 2 retries
    assert took < 30, took
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "stopped answering" in manifest["stop_reason"]
    assert manifest["totals"]["failed_requests"] <= 4  # the breaker's 3 and one in flight at most
    assert len(Journal(out)) == 4  # what was answered before is kept: a rerun continues from there


def test_a_model_the_server_does_not_list_is_an_error_or_a_warning_where_any_name_is_served(tmp_path):
    src = TESTDOC / "guide" / "faq.txt"
    with FakeLLMServer() as srv:
        wrong = run(srv, src, tmp_path / "o", "-m", "no-such-model")
        assert srv.requests == []
    assert wrong.exit_code == 3 and "does not serve --model 'no-such-model'" in text_of(wrong)
    assert "fake-model" in text_of(wrong)  # what it does list
    with FakeLLMServer(dialect="llama-cpp-python") as srv:
        anyname = run(srv, src, tmp_path / "l", "-m", "no-such-model")
    assert anyname.exit_code == 0, text_of(anyname)
    assert text_of(anyname).count("serves its only model under any name") == 1
    manifest = json.loads((tmp_path / "l" / "manifest.json").read_text())
    assert manifest["model"] == "no-such-model" and manifest["served_model"] == "/models/qwen2.5:3b.gguf"


def test_retries_of_the_same_prompt_get_the_next_seed_the_same_on_every_run(tmp_path):
    def seeds(out):
        with FakeLLMServer(faults=["malformed:2"]) as srv:
            result = run(srv, TESTDOC / "guide", out, "--seed", "3", "-c", "1")
            assert result.exit_code in (0, 4), text_of(result)
            by_prompt = {}
            for r in srv.requests:
                by_prompt.setdefault(key(r["body"]), []).append(r["body"]["seed"])
        return by_prompt

    first = seeds(tmp_path / "a")
    repeated = [s for s in first.values() if len(s) > 1]
    assert repeated, "no prompt was asked twice: the test proves nothing"
    assert all(s == list(range(3, 3 + len(s))) for s in first.values())  # seed + attempt
    assert seeds(tmp_path / "b") == first


def test_a_run_that_delivers_nothing_exits_4_and_says_so(tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer(faults=["malformed"]) as srv:
        result = run(srv, TESTDOC / "guide" / "faq.txt", out, "--max-attempts", "1")
    assert result.exit_code == 4, text_of(result)
    assert "Nothing was delivered" in text_of(result)
    assert json.loads((out / "manifest.json").read_text())["status"] == "nothing_delivered"


def test_manifest_keeps_usage_for_this_run_and_in_total(tmp_path):
    out = tmp_path / "o"
    runs = []
    for extra in (["--max-requests", "3"], [], []):
        with FakeLLMServer() as srv:
            result = run(srv, TESTDOC / "guide", out, *extra)
            runs.append((result.exit_code, len(srv.requests), json.loads((out / "manifest.json").read_text())))
    assert [r[0] for r in runs] == [5, 0, 0]
    usage = [m["usage"] for _, _, m in runs]
    assert [u["this_run"]["requests"] for u in usage] == [runs[0][1], runs[1][1], 0]  # the last: all replayed
    assert usage[2]["this_run"]["prompt_tokens"] == 0
    assert usage[2]["total"] == usage[1]["total"]
    assert usage[1]["total"]["requests"] == runs[0][1] + runs[1][1]
    assert usage[1]["total"]["prompt_tokens"] == (usage[0]["this_run"]["prompt_tokens"]
                                                 + usage[1]["this_run"]["prompt_tokens"]) > 0


def test_a_reply_too_long_for_the_context_is_fitted_not_failed(small_testdoc, tmp_path):
    """vLLM refuses prompt + max_tokens over its context (400 with the numbers): datakeg asks again at
    once with the max_tokens that fits (no retry spent, no failed request)."""
    out = tmp_path / "o"
    with FakeLLMServer(dialect="vllm", n_ctx=1000) as srv:
        result = run(srv, small_testdoc / "guide", out, "-c", "1")
        bodies = [r["body"] for r in srv.requests]
    assert result.exit_code == 0, text_of(result)
    t = totals(out)
    assert t["failed_requests"] == 0 and t["delivered"] == t["target"]
    prompt_tokens = [len("\n".join(m["content"] for m in b["messages"])) // 4 for b in bodies]
    too_long = [b for b, p in zip(bodies, prompt_tokens) if p + b["max_tokens"] > 1000]
    fitted = [b for b, p in zip(bodies, prompt_tokens) if p + b["max_tokens"] == 1000]
    assert too_long, "no request was too long: the test proves nothing"
    assert len(fitted) == len(too_long)  # each asked again once, with max_tokens = context - prompt


def test_with_wait_for_model_a_server_that_comes_back_is_waited_for(small_testdoc, tmp_path):
    import threading
    import time

    out = tmp_path / "o"
    dying = FakeLLMServer(die_after=3).start()
    port = dying.port
    back: list[FakeLLMServer] = []

    def restart():  # the server comes back on the same port a little later
        while not dying.dead:
            time.sleep(0.05)
        time.sleep(2.0)
        back.append(FakeLLMServer(port=port).start())

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        result = run(dying, small_testdoc, out, "-c", "1", "--max-retries", "1", "--wait-for-model", "30")
    finally:
        thread.join(10)
        for srv in back:
            srv.stop()
    printed = text_of(result)
    assert back, "the server never came back: the test proves nothing"
    assert "checking the server" in printed and "answers again" in printed
    assert result.exit_code in (0, 4), printed  # 4: a chunk still short of the requests that failed meanwhile
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["totals"]["failed_requests"] <= 3 and len(back[0].requests) > 0


def test_ollama_steps_down_when_the_server_refuses_the_format(healthy, tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer(dialect="no-response-format") as srv:
        result = generate(srv, out, "--max-attempts", "0", "-c", "1", provider="ollama", quiet=False)
        refused = [r for r in srv.requests if r.get("status")]
        answered = [r for r in srv.requests if not r.get("status")]
    printed = text_of(result)
    assert result.exit_code == 0, printed
    assert len(refused) == 2 and all("format" not in r["body"] or not r["body"]["format"] for r in answered)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["structured_output"] == "none" and manifest["totals"]["failed_requests"] == 0
    assert printed.count("refused format schema") == 1 and printed.count("refused format json") == 1
    assert outputs(out) == healthy["ollama"][0]
