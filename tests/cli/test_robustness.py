"""Runs that survive: kill -9 and resume, concurrency, retries, budgets, config, bad input, audit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.generation.journal import JOURNAL, JOURNAL_DIR
from datakeg.testing.fake_server import FakeLLMServer

from conftest import ROOT, TESTDOC, wait_for_requests

SPLITS = ("train", "valid", "test")


def outputs(out: Path) -> dict[str, str]:
    """Every JSONL the run wrote (journal excluded), by relative path."""
    return {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.jsonl"))
            if JOURNAL_DIR not in p.parts}


def gen(srv, src, out, *extra, env=None):
    args = ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q", *extra]
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_kill_9_then_resume_matches_uninterrupted_run_and_repeats_no_finished_request(corpus, tmp_path):
    src = corpus  # 8 documents, about 40 requests: the kill points below all land mid-run
    with FakeLLMServer() as srv:
        assert gen(srv, src, tmp_path / "full", "-c", "1").exit_code == 0
        full_requests = len(srv.requests)
    expected = outputs(tmp_path / "full")
    assert full_requests > 30
    for kill_after in (3, 12, full_requests - 5):
        out = tmp_path / f"killed{kill_after}"
        with FakeLLMServer(latency=0.05) as srv:
            cmd = [sys.executable, "-m", "datakeg", "generate", str(src), str(out), "-p", "openai",
                   "--base-url", srv.url, "-q", "-c", "1"]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_requests(srv, kill_after, proc, timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # nothing half-written: every JSONL in OUT parses completely
        for text in outputs(out).values():
            for line in text.splitlines():
                json.loads(line)
        journal = out / JOURNAL_DIR / JOURNAL
        finished = sum(1 for line in journal.read_text().splitlines() if line.endswith("}"))
        assert finished >= kill_after - 1
        with FakeLLMServer() as srv:
            result = gen(srv, src, out, "-c", "1")
            assert result.exit_code == 0, result.output
            # finished requests were replayed from the journal, never sent again
            assert len(srv.requests) == full_requests - finished
        assert outputs(out) == expected
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["totals"]["replayed_from_journal"] == finished


def test_ctrl_c_stops_cleanly_with_exit_130_and_resumes(corpus, tmp_path):
    out = tmp_path / "o"
    src = corpus  # about 40 requests: 4 s at 100 ms each, so the interrupt lands mid-run
    with FakeLLMServer(latency=0.1) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "datakeg", "generate", str(src), str(out), "-p", "openai",
                                 "--base-url", srv.url, "-q", "-c", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for_requests(srv, 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        assert "Traceback" not in err
        done = len(srv.requests)
        result = gen(srv, src, out, "-c", "1")
        assert result.exit_code == 0
        t = json.loads((out / "manifest.json").read_text())["totals"]
        assert t["replayed_from_journal"] >= done - 1 and t["delivered"] == t["target"]


def test_outputs_identical_whatever_the_concurrency(corpus, tmp_path):
    import random

    # a document that repeats another's text: the leakage audit removes and backfills across documents
    rng = random.Random(3)
    tail = " ".join("".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(300))
    (corpus / "copy.md").write_text((corpus / "README.md").read_text() + "\n\n" + tail + ".\n")
    for c in ("1", "6", "32"):
        # jitter: with concurrency, replies come back in a different order every run
        with FakeLLMServer(faults=["duplicates:3", "fewer:4"], jitter=0.01) as srv:
            assert gen(srv, corpus, tmp_path / f"c{c}", "-c", c).exit_code == 0
    m1 = json.loads((tmp_path / "c1" / "manifest.json").read_text())
    assert m1["totals"]["dropped"]["duplicate"] > 0 and m1["totals"]["dropped"]["leakage"] > 0
    for c in ("6", "32"):
        assert outputs(tmp_path / "c1") == outputs(tmp_path / f"c{c}")
        m = json.loads((tmp_path / f"c{c}" / "manifest.json").read_text())
        assert m1["files"] == m["files"] and m1["totals"]["requests"] == m["totals"]["requests"]


def test_rerun_with_same_settings_makes_no_request(server, tmp_path):
    assert gen(server, TESTDOC, tmp_path / "o").exit_code == 0
    first = len(server.requests)
    before = outputs(tmp_path / "o")
    assert gen(server, TESTDOC, tmp_path / "o").exit_code == 0
    assert len(server.requests) == first
    assert outputs(tmp_path / "o") == before


def test_retries_on_429_and_500(small_testdoc, tmp_path):
    with FakeLLMServer(faults=["http429:2", "http500:3"]) as srv:  # short pages: each retry backs off
        result = gen(srv, small_testdoc, tmp_path / "o")
        statuses = len(srv.requests)
    assert result.exit_code == 0, result.output
    t = json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]
    assert t["delivered"] == t["target"] and t["failed_requests"] == 0
    assert statuses > t["requests"]  # the server saw the retried attempts too


def test_ollama_retries_server_errors(small_testdoc, tmp_path):
    with FakeLLMServer(faults=["http500:2"]) as srv:  # short pages: each retry backs off
        result = CliRunner().invoke(cli, ["generate", str(small_testdoc), str(tmp_path / "o"), "-q"],
                                    env={"OLLAMA_HOST": srv.ollama_host})
    assert result.exit_code == 0, result.output
    t = json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]
    assert t["delivered"] == t["target"]


def test_failing_requests_are_recorded_and_exit_4(tmp_path):
    with FakeLLMServer(faults=["http500"]) as srv:
        result = gen(srv, TESTDOC, tmp_path / "o", "--max-retries", "0", "--max-attempts", "0")
    assert result.exit_code == 4
    assert "because requests failed" in result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["totals"]["failed_requests"] == manifest["totals"]["requests"] > 0
    rejects = [json.loads(l) for l in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert all(r["kind"] == "request_failed" and "500" in r["error"] for r in rejects)
    # the failed calls were not journaled: a rerun against a healthy server does the work
    with FakeLLMServer() as srv:
        assert gen(srv, TESTDOC, tmp_path / "o", "--max-retries", "0", "--max-attempts", "0").exit_code == 0
    t = json.loads((tmp_path / "o" / "manifest.json").read_text())["totals"]
    assert t["delivered"] == t["target"]


def test_max_requests_stops_and_resumes(server, tmp_path):
    assert gen(server, TESTDOC, tmp_path / "full").exit_code == 0
    full = len(server.requests)
    server.requests.clear()
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai", "--base-url",
                                      server.url, "-q", "--max-requests", "3", "-c", "1"])
    assert result.exit_code == 5
    assert "stopped at --max-requests 3" in result.output and "Rerun the same command" in result.output
    assert len(server.requests) == 3
    server.requests.clear()
    assert gen(server, TESTDOC, tmp_path / "o", "--max-requests", "1000").exit_code == 0
    assert len(server.requests) == full - 3
    assert outputs(tmp_path / "o") == outputs(tmp_path / "full")


def test_max_tokens_budget(server, tmp_path):
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "-p", "openai", "--base-url",
                                      server.url, "-q", "--max-tokens", "100", "-c", "1"])
    assert result.exit_code == 5 and "--max-tokens 100" in result.output
    assert len(server.requests) == 1


def test_different_settings_refused_unless_fresh_or_resume(server, tmp_path):
    out = tmp_path / "o"
    assert gen(server, TESTDOC, out).exit_code == 0
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", server.url,
                                      "--pairs-per-1k", "5"])
    assert result.exit_code == 2
    assert "different settings (pairs_per_1k changed)" in result.output and "--fresh" in result.output
    n = len(server.requests)
    assert gen(server, TESTDOC, out, "--pairs-per-1k", "5", "--fresh").exit_code == 0
    assert len(server.requests) > n
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["pairs_per_1k"] == 5 and m["totals"]["replayed_from_journal"] == 0
    # a folder datakeg did not write is never touched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(foreign), "-p", "openai", "--base-url", server.url,
                                      "--fresh"])
    assert result.exit_code == 2 and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # not even a lock file was left


def test_config_file(server, tmp_path):
    cfg = tmp_path / "datakeg.toml"
    cfg.write_text(f'provider = "openai"\nbase-url = "{server.url}"\nformat = "chat"\npairs_per_1k = 5\n'
                   'system_message = "Be exact."\n')
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "--config", str(cfg), "-q",
                                      "--pairs-per-1k", "6"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["provider"] == "openai" and m["settings"]["format"] == "chat"
    assert m["settings"]["pairs_per_1k"] == 6  # the flag beats the file
    assert m["settings"]["system_message"] == "Be exact."
    bad = tmp_path / "bad.toml"
    bad.write_text('provider = "openai"\nchunk_sise = 100\n')
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "--config", str(bad)])
    assert result.exit_code == 2 and "unknown key 'chunk_sise'" in result.output
    bad.write_text('api_key = "sk-123"\n')
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "--config", str(bad)])
    assert result.exit_code == 2 and "never go in the config" in result.output


def test_init_config_writes_a_usable_file(tmp_path):
    path = tmp_path / "datakeg.toml"
    assert CliRunner().invoke(cli, ["init-config", str(path)]).exit_code == 0
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "--config", str(path),
                                      "--dry-run"])
    assert result.exit_code == 0 and "TOTAL" in result.output
    assert CliRunner().invoke(cli, ["init-config", str(path)]).exit_code == 1  # never overwrites


def test_bad_input_each_reported_rest_processed(server, tmp_path):
    src = tmp_path / "docs"
    (src / "loop").mkdir(parents=True)
    (src / "good.md").write_text((TESTDOC / "README.md").read_text())
    os.symlink(src, src / "loop" / "back")  # a symlink loop
    os.symlink(src / "missing.md", src / "dangling.md")  # unreadable
    (src / "big.md").write_text("# Big\n\n" + "word " * 300_000)  # 1.5 MB
    (src / "cp1252.txt").write_bytes("Ça coûte 5 € — naïve café.\n\nDeuxième paragraphe.".encode("cp1252"))
    result = gen(server, src, tmp_path / "o", "--max-file-mb", "1")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [f["path"] for f in m["files"]] == ["cp1252.txt", "good.md"]
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert "over the --max-file-mb limit" in reasons["big.md"]
    assert reasons["dangling.md"].startswith("unreadable")
    assert "Ça coûte" in "".join((tmp_path / "o" / f"cp1252_{s}.jsonl").read_text(encoding="utf-8")
                                 for s in SPLITS)
    result = CliRunner().invoke(cli, ["generate", str(src), str(tmp_path / "o2"), "-p", "openai", "--base-url",
                                      server.url, "--max-file-mb", "1"])
    assert "cp1252.txt: not UTF-8; decoded as" in result.output


def test_leakage_audit_across_documents(server, tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    text = (TESTDOC / "README.md").read_text()
    extra = "\n\n" + " ".join(f"Extra sentence number {i} about counting files." for i in range(25))
    (src / "a.md").write_text(text)
    # b starts with a's text and goes on: b's train questions include a's valid/test questions
    (src / "b.md").write_text(text + extra)
    out = tmp_path / "o"
    assert gen(server, src, out).exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    removed = m["leakage_audit"]["removed"]
    assert sum(removed.values()) > 0 and m["totals"]["dropped"]["leakage"] == sum(removed.values())
    assert CliRunner().invoke(cli, ["audit", str(out)]).exit_code == 0
    # without the audit the leak stays, `datakeg audit` finds it and --remove takes it out
    out2 = tmp_path / "o2"
    assert gen(server, src, out2, "--no-audit").exit_code == 0
    result = CliRunner().invoke(cli, ["audit", str(out2)])
    found = int(result.output.split(" leaking question(s)")[0])
    assert result.exit_code == 1 and found >= removed.get("valid~train", 0) > 0
    assert CliRunner().invoke(cli, ["audit", str(out2), "--remove"]).exit_code == 0
    assert CliRunner().invoke(cli, ["audit", str(out2)]).exit_code == 0
    assert CliRunner().invoke(cli, ["validate", str(out2)]).exit_code == 0
