"""The promises the README makes about OUT, each tried against the fault it is about: a second
writer, a stop at any point, a full disk, SIGTERM, crafted manifests, bad options, leakage across
documents (checked against a brute-force similarity computed here)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.testing.fake_server import FakeLLMServer

from conftest import ROOT, TESTDOC, shared_text_docs, wait_for_requests

SPLITS = ("train", "valid", "test")


def gen(srv, src, out, *extra):
    return CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q",
                                    *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def cmd(srv, src, out, *extra):
    return [sys.executable, "-m", "datakeg", "generate", str(src), str(out), "-p", "openai", "--base-url", srv.url,
            "-q", *extra]


def test_out_is_consistent_after_a_stop_and_complete_after_the_rerun(tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer() as srv:
        assert gen(srv, TESTDOC, out).exit_code == 0
        complete = {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}
        # a second run with other settings, stopped by its budget after a few requests
        result = gen(srv, TESTDOC, out, "--fresh", "--pairs-per-1k", "6", "--max-requests", "4", "-c", "1")
        assert result.exit_code == 5
        m = json.loads((out / "manifest.json").read_text())
        assert m["status"] == "stopped" and "max-requests" in m["stop_reason"]
        # no merged file of the earlier run survives to describe another state
        assert not any((out / f"{s}.jsonl").exists() for s in SPLITS)
        for f in m["files"]:
            if f["status"] == "done":
                for s in SPLITS:
                    assert len(rows(out / f"{f['output']}_{s}.jsonl")) == f["delivered"][s]
            else:  # not written yet by this run, and nothing of the earlier run is left to be mixed in
                assert f["status"] == "pending"
                assert not any((out / f"{f['output']}_{s}.jsonl").exists() for s in SPLITS)
        assert any(f["status"] == "pending" for f in m["files"])
        assert gen(srv, TESTDOC, out, "--pairs-per-1k", "6").exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and all(f["status"] == "done" for f in m["files"])
    for s in SPLITS:
        merged = [r for f in m["files"] for r in rows(out / f"{f['output']}_{s}.jsonl")]
        assert rows(out / f"{s}.jsonl") == merged
        assert len(merged) == m["totals"]["delivered"][s]
    assert complete != {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}


def test_fresh_never_deletes_outside_out(tmp_path):
    out = tmp_path / "o"
    victim = tmp_path / "victim_train.jsonl"
    victim.write_text('{"keep": "me"}\n')
    with FakeLLMServer() as srv:
        assert gen(srv, TESTDOC, out).exit_code == 0
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["files"][0]["output"] = "../victim"  # crafted: points outside OUT
        manifest["files"].append({"output": str(tmp_path / "victim")})
        (out / "manifest.json").write_text(json.dumps(manifest))
        assert gen(srv, TESTDOC, out, "--fresh").exit_code == 0
    assert victim.read_text() == '{"keep": "me"}\n'


def test_sigterm_is_handled_like_ctrl_c_and_leaves_no_temp_files(small_testdoc, tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer(latency=0.1) as srv:
        proc = subprocess.Popen(cmd(srv, small_testdoc, out, "-c", "1", "--pairs-per-1k", "20"), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_requests(srv, 3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err and "Traceback" not in err
        assert not [p for p in out.rglob("*.tmp")]
        assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"
        done = len(srv.requests)
        # a stale temp file from a writer killed mid-write is cleaned up by the next run
        stale = out / ".train.jsonl.x1y2.tmp"
        stale.write_text("half a line")
        assert gen(srv, small_testdoc, out, "-c", "1", "--pairs-per-1k", "20").exit_code == 0
        assert not stale.exists()
        t = json.loads((out / "manifest.json").read_text())["totals"]
        assert t["replayed_from_journal"] >= done - 1 and t["delivered"] == t["target"]


# The CLI in a process whose files may not grow past 6 kB: writes past it fail with EFBIG
# ("File too large"), as writes fail on a full disk. The language model is loaded first (py3langid
# unpacks it into a temp file).
FULL_DISK = """
import resource, signal, sys
from datakeg.sources.language import detect_language
detect_language("This sentence is plainly written in English so that the model loads. " * 3)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
from datakeg.cli import main
sys.argv = ["datakeg"] + sys.argv[1:]
main()
"""


def test_full_disk_is_one_clear_line_and_resumable(small_testdoc, tmp_path):
    out = tmp_path / "o"
    with FakeLLMServer() as srv:
        args = cmd(srv, small_testdoc, out, "-c", "1", "--pairs-per-1k", "20")[3:]
        proc = subprocess.run([sys.executable, "-c", FULL_DISK, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
        assert "File too large" in proc.stderr and "run the same command again" in proc.stderr
        assert not [p for p in out.rglob("*.tmp")]
        for p in out.rglob("*.jsonl"):  # every line written is whole
            for line in p.read_text(encoding="utf-8").split("\n"):
                if line and p.name != "journal.jsonl":
                    json.loads(line)
        assert gen(srv, small_testdoc, out, "-c", "1", "--pairs-per-1k", "20").exit_code == 0
    t = json.loads((out / "manifest.json").read_text())["totals"]
    assert t["delivered"] == t["target"] and t["replayed_from_journal"] > 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so a read-only folder cannot be made")
def test_read_only_out_is_a_clear_error(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o500)
    with FakeLLMServer() as srv:
        result = gen(srv, TESTDOC, out)
    assert result.exit_code != 0 and "Traceback" not in result.output and "write" in result.output


@pytest.mark.parametrize("args, message", [
    (["--pairs-per-1k", "nan"], "finite number"),
    (["--pairs-per-1k", "inf"], "finite number"),
    (["--temperature", "-1"], "--temperature must be between"),
    (["--batch-size", "0"], "--batch-size must be between"),
    (["--chunk-size", "99999999999"], "--chunk-size must be between"),
    (["--concurrency", "0"], "--concurrency must be a whole number from 1"),
    (["--concurrency", "-4"], "--concurrency must be a whole number from 1"),
    (["--max-requests", "0"], "--max-requests must be greater than 0"),
    (["--request-timeout", "nan"], "finite number"),
])
def test_absurd_options_are_refused_before_any_request(server, tmp_path, args, message):
    result = gen(server, TESTDOC, tmp_path / "o", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and server.requests == []


def test_src_equal_to_or_inside_out_is_refused(server, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text((TESTDOC / "README.md").read_text())
    result = gen(server, docs, docs)
    assert result.exit_code == 2 and "SRC and OUT are the same folder" in result.output
    result = gen(server, docs, tmp_path)
    assert result.exit_code == 2 and "lies inside OUT" in result.output
    assert server.requests == [] and sorted(p.name for p in docs.iterdir()) == ["a.md"]


def _brute_force_leaks(questions, splits, docs, threshold):
    """Every pair that must not coexist, computed the slow, obvious way (dense cosine)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from datakeg.curation.quality import normalize_question

    norm = [normalize_question(q) for q in questions]
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(norm)
    sims = (x @ x.T).toarray()
    bad = []
    for i in range(len(questions)):
        for j in range(i):
            if splits[i] == splits[j] and docs[i] == docs[j]:
                continue
            if sims[i, j] >= threshold - 1e-6 or norm[i] == norm[j]:
                bad.append((questions[j], questions[i], round(float(sims[i, j]), 3)))
    return bad


def test_no_leak_across_documents_and_targets_still_met(server, tmp_path):
    """Three documents that share most of their text: the same questions come up in every split of
    every document. After the run no question may be near another one of an earlier split (or of
    the same split in another document), and backfill still meets the targets."""
    src = shared_text_docs(tmp_path / "docs")
    out = tmp_path / "o"
    assert gen(server, src, out).exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert sum(m["leakage_audit"]["removed"].values()) > 0  # the fault was there
    questions, splits, docs = [], [], []
    for k, f in enumerate(m["files"]):
        for s in SPLITS:
            for r in rows(out / f"{f['output']}_{s}.jsonl"):
                questions.append(r["prompt"])
                splits.append(s)
                docs.append(k)
    assert _brute_force_leaks(questions, splits, docs, 0.9) == []
    assert m["totals"]["delivered"] == m["totals"]["target"]
    rejects = [json.loads(l) for l in (out / "rejects.jsonl").read_text().split("\n") if l]
    leaks = [r for r in rejects if r.get("reason") == "leakage"]
    assert len(leaks) == m["totals"]["dropped"]["leakage"] and all(r["similar_question"] for r in leaks)


def test_two_endpoints_share_the_work_and_a_failing_one_is_drained(tmp_path):
    """Two servers of the same model: both get work; when one fails every request, its work is
    retried on the other, the run still meets its targets and writes the same files as a run on
    one healthy server (the journal key does not depend on the endpoint)."""
    out_one, out_two, out_bad = tmp_path / "one", tmp_path / "two", tmp_path / "bad"
    with FakeLLMServer() as srv:
        assert gen(srv, TESTDOC, out_one, "-c", "2").exit_code == 0
    with FakeLLMServer(latency=0.02) as a, FakeLLMServer(latency=0.02) as b:
        result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out_two), "-p", "openai", "--base-url", a.url,
                                          "--base-url", b.url, "-c", "2", "-q"])
        assert result.exit_code == 0, result.output
        assert len(a.requests) > 5 and len(b.requests) > 5
    with FakeLLMServer(faults=["http500"]) as a, FakeLLMServer() as b:
        result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out_bad), "-p", "openai", "--base-url", a.url,
                                          "--base-url", b.url, "-c", "2", "-q", "--max-retries", "0"])
        assert result.exit_code == 0, result.output
        sent_to_bad = len(a.requests)
    m = json.loads((out_bad / "manifest.json").read_text())
    assert m["totals"]["delivered"] == m["totals"]["target"] and m["totals"]["failed_requests"] == 0
    bad, good = m["endpoints"]
    assert bad["failed"] == bad["requests"] == sent_to_bad
    assert sent_to_bad < good["requests"] / 2  # drained after a couple of failures, not tried for every request
    for out in (out_two, out_bad):
        assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == \
            {p.name: p.read_bytes() for p in out_one.glob("*.jsonl")}


def test_server_prefix_cache_and_prompt_prefix_share_are_reported(server, tmp_path):
    assert gen(server, TESTDOC, tmp_path / "o").exit_code == 0
    t = json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]
    # the fake server reports prompt_tokens_details.cached_tokens like vLLM / OpenAI do
    assert 0 < t["cached_prompt_tokens"] < t["prompt_tokens"]
    # later requests for a chunk repeat its first request's start: system prompt, document, excerpt
    assert 0.3 < t["prompt_prefix_share"] < 1


def test_the_benchmark_server_reset_forgets_every_request_and_sets_the_latency(small_testdoc, tmp_path):
    """benchmarks/ reuse one fake server per shape (its reply cache warm) and reset it before each
    run: the run's figures must be those of a freshly started server."""
    import time
    import urllib.request

    def post(url, body):
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        start = time.monotonic()
        with urllib.request.urlopen(req) as r:
            json.loads(r.read())
        return time.monotonic() - start

    def cached(out):
        return json.loads((out / "manifest.json").read_text())["totals"]["cached_prompt_tokens"]

    with FakeLLMServer() as srv:
        assert gen(srv, small_testdoc, tmp_path / "a").exit_code == 0
        first, requests = cached(tmp_path / "a"), len(srv.requests)
        assert gen(srv, small_testdoc, tmp_path / "b").exit_code == 0
        assert cached(tmp_path / "b") > first  # not reset: the server remembers every prompt
        post(srv.url.replace("/v1", "/fake/reset"), {})
        assert srv.requests == []
        assert gen(srv, small_testdoc, tmp_path / "c").exit_code == 0
        assert cached(tmp_path / "c") == first and len(srv.requests) == requests  # as a fresh server
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}
        post(srv.url.replace("/v1", "/fake/reset"), {"latency": 0.5})
        assert srv.latency == 0.5
        assert post(srv.url + "/chat/completions", chat) >= 0.5  # counted from the request's arrival
        post(srv.url.replace("/v1", "/fake/reset"), {"latency": 0})
        assert post(srv.url + "/chat/completions", chat) < 0.5


def test_a_second_process_is_refused_while_a_run_holds_out(tmp_path):
    out = tmp_path / "o"
    # slow replies while the second process starts (a loaded machine may take seconds to start
    # Python), so the first run surely still holds OUT; fast again afterwards
    with FakeLLMServer(latency=1.0) as srv:
        first = subprocess.Popen(cmd(srv, TESTDOC, out, "-c", "1"), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for_requests(srv, 2)
        second = subprocess.run(cmd(srv, TESTDOC, out, "-c", "1"), cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        srv.latency = 0.0
        assert second.returncode == 2, second.stderr
        assert f"is being written by datakeg generate (pid {first.pid}" in second.stderr
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        requests = len(srv.requests)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["totals"]["requests"] == requests  # nobody else paid for work


def test_tiny_documents_still_fill_every_split(tmp_path):
    """3,000 one-pair documents once all went to train; the shares now hold for the dataset."""
    import datakeg

    src = tmp_path / "docs"
    for k in range(3000):
        path = src / f"d{k // 100}" / f"p{k}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Page {k}\n\nThe option number {k} sets the size of buffer {k}.\n")
    dry = datakeg.plan(src, pairs_per_1k=1)
    assert dry.plan.by_split == {"train": 1800, "valid": 600, "test": 600} and dry.warnings == []
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.md").write_text("# A\n\nThe only fact.\n")
    dry = datakeg.plan(one, pairs_per_1k=1)
    assert dry.plan.by_split["train"] == 1 and len(dry.warnings) == 2 and "valid split will be empty" in dry.warnings[0]


def test_identical_chunks_are_separate_work_whatever_the_concurrency(tmp_path):
    """Regression: two chunks with the same text shared journal keys, so one was served the other's
    reply, paid replies were overwritten and a rerun paid again."""
    src = tmp_path / "docs"
    src.mkdir()
    section = "## Notes\n\n" + "Tallyho reads every Markdown file in the folder and counts its words. " * 6
    (src / "a.md").write_text("# Manual\n\n" + "\n\n".join([section] * 4), encoding="utf-8")
    outs = {}
    for c in ("1", "4"):
        with FakeLLMServer(jitter=0.01) as srv:
            assert gen(srv, src, tmp_path / f"c{c}", "-c", c, "--chunk-size", "600").exit_code == 0
            sent = len(srv.requests)
        m = json.loads((tmp_path / f"c{c}" / "manifest.json").read_text())
        assert m["totals"]["replayed_from_journal"] == 0 and m["totals"]["requests"] == sent
        outs[c] = {p.name: p.read_bytes() for p in (tmp_path / f"c{c}").glob("*.jsonl")}
        with FakeLLMServer() as srv:  # a rerun pays for nothing
            assert gen(srv, src, tmp_path / f"c{c}", "-c", c, "--chunk-size", "600").exit_code == 0
            assert srv.requests == []
    assert outs["1"] == outs["4"]


def test_one_server_refusing_the_key_is_drained_not_fatal(tmp_path):
    with FakeLLMServer(faults=["http401"]) as bad, FakeLLMServer() as good:
        result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai",
                                          "--base-url", bad.url, "--base-url", good.url, "-c", "2", "-q"])
        assert result.exit_code == 0, result.output
        assert len(bad.requests) <= 2  # refused once per slot at most, then never used again
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["totals"]["delivered"] == m["totals"]["target"] and m["endpoints"][0]["refused"] is True


def test_a_retry_waiting_for_a_server_that_then_refuses_the_key_fails_alone(tmp_path):
    """A request fails on server A (an HTML page) and waits for B's only slot; B then refuses the
    key. A still answers, so that request has failed (a rerun retries it) and the run goes on: it
    must not stop with "every model server refused"."""
    with FakeLLMServer(faults=["html200"]) as a, FakeLLMServer(faults=["http401"], latency=0.3) as b:
        result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai",
                                          "--base-url", a.url, "--base-url", b.url, "-c", "1", "-q"])
        retried = len(b.requests)
    assert "every model server refused" not in result.output, result.output
    assert result.exit_code == 4, result.output  # finished, short because requests failed
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    # finished (not stopped), without a single pair: every request failed
    assert m["status"] == "nothing_delivered" and m["endpoints"][1]["refused"] is True and retried >= 1
    assert m["totals"]["failed_requests"] > 0


def test_a_stop_during_the_leakage_backfill_leaves_out_consistent(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    base = (TESTDOC / "README.md").read_text()
    (src / "a.md").write_text(base)
    (src / "b.md").write_text(base + "\n\n" + " ".join(f"Extra fact {i} about item{i}x." for i in range(20)))
    with FakeLLMServer() as srv:
        assert gen(srv, src, tmp_path / "plain", "--no-audit").exit_code == 0
        generation_requests = len(srv.requests)
    with FakeLLMServer() as srv:  # the budget runs out at the first backfill request of the audit
        result = gen(srv, src, tmp_path / "o", "--max-requests", str(generation_requests))
    assert result.exit_code == 5, result.output
    out = tmp_path / "o"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "stopped" and m["totals"]["dropped"].get("leakage", 0) > 0
    for f in m["files"]:
        for s in SPLITS:  # what the manifest says is what the files hold
            assert len(rows(out / f"{f['output']}_{s}.jsonl")) == f["delivered"][s]
    leak_rejects = [r for r in rows(out / "rejects.jsonl") if r.get("reason") == "leakage"]
    assert len(leak_rejects) == m["totals"]["dropped"]["leakage"]
