"""Curation end to end through the CLI: planted junk never reaches the splits and backfill still
meets the targets; the judge pass drops, records and (with --keep-scores) keeps scores; coverage."""

import json
from pathlib import Path

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.curation.quality import dangling, echo
from datakeg.dataset.records import from_row
from datakeg.testing.fake_server import FakeLLMServer

from conftest import TESTDOC

SPLITS = ("train", "valid", "test")


def run(srv, out, *extra, src=TESTDOC):
    args = ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def rows(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def test_planted_junk_never_reaches_the_splits_and_targets_are_met(tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer(faults=["junk"]) as srv:
        result = run(srv, out, "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["totals"]
    assert t["delivered"] == t["target"]
    assert t["dropped"]["dangling"] > 20 and t["dropped"]["echo"] > 20
    planted = [r for r in rejects(out) if r.get("reason") in ("dangling", "echo")]
    # CJK documents got their own planted questions, and they were caught too
    assert any(r["question"].startswith("本节") for r in planted)
    assert any(r["question"].startswith("この節") for r in planted)
    delivered = [from_row(row) for sp in SPLITS for row in rows(out, sp)]
    planted_q = {r["question"] for r in planted if r["reason"] == "dangling"}
    planted_qa = {(r["question"], r["answer"]) for r in planted if r["reason"] == "echo"}
    for pair in delivered:
        assert not dangling(pair.question) and not echo(pair.question, pair.answer)
        assert pair.question not in planted_q and (pair.question, pair.answer) not in planted_qa
    # every drop is counted in the manifest and listed in rejects.jsonl
    for reason in ("dangling", "echo"):
        assert sum(r.get("reason") == reason for r in rejects(out)) == t["dropped"][reason]
    # the summary printed the coverage
    cov = manifest["coverage"]
    assert not cov["sections_without_pairs"]
    assert {s["file"] for s in cov["sections"]} == {f["path"] for f in manifest["files"]}
    assert sum(sum(s["pairs"].values()) for s in cov["sections"]) == sum(t["delivered"].values())
    assert all(sum(cov["question_kinds"][sp].values()) == t["delivered"][sp] for sp in SPLITS)


def test_judge_drops_low_scores_keeps_scores_and_replays(small_testdoc, tmp_path):
    out = tmp_path / "out"
    # grounding off, so the fake server's invented pair (kept within the count by "fewer") reaches the judge
    args = ("--no-grounding", "--judge-model", "fake-model", "--keep-scores")
    with FakeLLMServer(faults=["ungrounded", "fewer"]) as srv:
        result = run(srv, out, *args, src=small_testdoc)
        assert result.exit_code == 0, result.output
        assert "Judge:" in result.output and "Coverage:" in result.output
        judge_prompts = [r for r in srv.requests if "Rate each question-answer pair" in r["body"]["messages"][1]["content"]]
        assert judge_prompts and all(r["body"]["model"] == "fake-model" for r in judge_prompts)
        # at most 15 pairs per judge request
        assert max(r["body"]["messages"][1]["content"].count('{"index": ') for r in judge_prompts) <= 15
        manifest = json.loads((out / "manifest.json").read_text())
        t = manifest["totals"]
        assert t["delivered"] == t["target"] and t["dropped"]["judge"] > 0
        assert manifest["judge"]["dropped"] == t["dropped"]["judge"] and manifest["judge"]["requests"] >= len(judge_prompts)
        assert manifest["settings"]["judge_model"] == "fake-model" and manifest["settings"]["judge_threshold"] == 3.0
        judged = [r for r in rejects(out) if r.get("reason") == "judge"]
        assert all("Zorblax" in r["question"] and r["scores"]["faithful"] == 1 and r["scores"]["reason"]
                   for r in judged)
        for sp in SPLITS:
            for row in rows(out, sp):
                assert set(row) == {"prompt", "completion", "scores"} and row["scores"]["score"] >= 3
                assert "Zorblax" not in row["prompt"]
        validated = CliRunner().invoke(cli, ["validate", str(out)], catch_exceptions=False)
        assert validated.exit_code == 0, validated.output
        before = {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS}
        # a rerun replays every generation and judge call from the journal
        n = len(srv.requests)
        again = run(srv, out, *args, "-q", src=small_testdoc)
        assert again.exit_code == 0, again.output
        assert len(srv.requests) == n
        assert {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS} == before
        # the judge's settings are part of the run's identity
        other = run(srv, out, "--no-grounding", "--judge-model", "fake-model", "--judge-threshold", "4", "-q",
                    src=small_testdoc)
        assert other.exit_code == 2


def test_unreadable_judge_replies_drop_pairs_as_unjudged_and_are_retried(small_testdoc, tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer(faults=["malformed:3"]) as srv:
        result = run(srv, out, "--judge-model", "fake-model", "-q", src=small_testdoc)
    assert result.exit_code in (0, 4), result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # a broken judge reply is asked again (a different journal key); nothing unscored is accepted
    for sp in SPLITS:
        assert len(rows(out, sp)) == manifest["totals"]["delivered"][sp]
    assert manifest["judge"]["pairs_scored"] >= sum(manifest["totals"]["delivered"].values())


def test_judge_options_need_a_judge_model(tmp_path):
    with FakeLLMServer() as srv:
        result = run(srv, tmp_path / "out", "--keep-scores", "-q")
    assert result.exit_code == 2 and "--judge-model" in result.output


def test_judge_and_generation_requests_wait_for_their_own_servers_slots(small_testdoc, tmp_path):
    """The judge on its own server, one request slot per server: each server must get only its own
    kind (a generation request handed a judge slot would be sent to the judge's server)."""
    out = tmp_path / "out"
    with FakeLLMServer(latency=0.02) as gen_srv, FakeLLMServer(latency=0.02) as judge_srv:
        result = run(gen_srv, out, "--judge-model", "fake-model", "--judge-base-url", judge_srv.url, "-c", "1", "-q",
                     src=small_testdoc)
        assert result.exit_code == 0, result.output

        def judging(r):
            return "Rate each question-answer pair" in r["body"]["messages"][1]["content"]

        assert judge_srv.requests and all(judging(r) for r in judge_srv.requests)
        assert gen_srv.requests and not any(judging(r) for r in gen_srv.requests)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["judge"]["requests"] == len(judge_srv.requests)


def test_a_judge_on_the_generation_server_stays_within_its_concurrency(small_testdoc, tmp_path):
    """By default the judge asks the generation server: judge and generation requests together must
    never have more than --concurrency requests in flight there. Every request takes the server's
    latency, so three arrivals within less than it means three were in flight at once."""
    latency = 0.1
    with FakeLLMServer(latency=latency) as srv:
        result = run(srv, tmp_path / "out", "--judge-model", "fake-model", "-c", "2", "-q", src=small_testdoc)
        assert result.exit_code == 0, result.output
        arrivals = sorted(r["at"] for r in srv.requests)
    assert any("Rate each question-answer pair" in r["body"]["messages"][1]["content"] for r in srv.requests)
    assert len(arrivals) > 10
    assert all(later - earlier >= 0.9 * latency for earlier, later in zip(arrivals, arrivals[2:]))
