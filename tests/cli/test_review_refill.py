"""`generate --refill`: the pairs rejected in review are replaced, not silently lost.

Real CLI, real openai client, real HTTP to the fake server; the decisions are made through
ReviewModel (no browser). The independent truths: the merged files on disk, the fake server's own
log of the requests it received, and the review journal.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from rapidfuzz import fuzz

from datakeg.cli import cli
from datakeg.curation.quality import normalize_question
from datakeg.dataset import review_journal as rj
from datakeg.dataset.records import from_row
from datakeg.review.model import ReviewModel

SPLITS = ("train", "valid", "test")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def questions(out: Path, split: str) -> list[str]:
    return [from_row(r).question for r in rows(out / f"{split}.jsonl")]


def gen(srv, src: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q",
                                    *extra], catch_exceptions=False)


def prompt(req: dict) -> str:
    return "\n".join(m.get("content") or "" for m in req["body"]["messages"])


def test_refill_replaces_rejected_pairs_with_new_requests_for_their_chunks_only(server, small_testdoc, tmp_path):
    out = tmp_path / "out"
    r = gen(server, small_testdoc, out)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    target = manifest["totals"]["target"]
    assert manifest["totals"]["delivered"] == target  # the fake server delivers everything
    run_json = (out / ".datakeg" / "run.json").read_text()

    # reject one train pair and one test pair (of different documents where there are two)
    m = ReviewModel(out)
    train_id = m.listing(split="train", kind="row")["ids"][0]
    train = m.detail(train_id)
    test_ids = m.listing(split="test", kind="row")["ids"]
    test_id = next((i for i in test_ids if m.detail(i)["file"] != train["file"]), test_ids[-1])
    test = m.detail(test_id)
    m.decide(train_id, "reject", 0)
    m.decide(test_id, "reject", 0)
    rejected = {"train": train, "test": test}
    prov = rows(out / "provenance.jsonl")
    where = {sp: next((p["file"], p["chunk"]) for p in prov if p["split"] == sp and p["question"] == d["question"])
             for sp, d in rejected.items()}

    # a plain rerun leaves them out and asks for nothing (the README's "not backfilled")
    seen = len(server.requests)
    r = gen(server, small_testdoc, out)
    assert r.exit_code == 0, r.output
    assert len(server.requests) == seen
    for sp, d in rejected.items():
        assert d["question"] not in questions(out, sp)
        assert len(questions(out, sp)) == target[sp] - 1

    # --refill: back at target, rejected questions absent (nor anything near them), new requests
    # only for the two affected chunks, each told to avoid its rejected question
    r = gen(server, small_testdoc, out, "--resume", "--refill")
    assert r.exit_code == 0, r.output
    new = server.requests[seen:]
    assert new, "--refill sent no request"
    for req in new:
        text = prompt(req)
        hits = [sp for sp, d in rejected.items() if d["question"] in text]
        assert len(hits) == 1, text[-1500:]  # the avoid list names its slot's rejected question
        f, _ = where[hits[0]]
        assert f in text  # the source document of the rejected pair
        assert req["body"]["messages"]  # and nothing else was asked
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    for sp in SPLITS:
        qs = questions(out, sp)
        assert len(qs) == target[sp], (sp, len(qs), target[sp])
    for sp, d in rejected.items():
        qs = questions(out, sp)
        assert d["question"] not in qs
        norm = normalize_question(d["question"])
        assert all(fuzz.ratio(norm, normalize_question(q)) < 90 for q in qs)
    per_file = {sp: [q for f in manifest["files"] for q in
                     [from_row(x).question for x in rows(out / f"{f['output']}_{sp}.jsonl")]] for sp in SPLITS}
    assert all(d["question"] not in per_file[sp] for sp, d in rejected.items())
    assert manifest["review"]["refill_removed"] == 2 and manifest["review"]["refilled"] == 2
    assert manifest["totals"]["delivered"] == target
    # the replacements: exactly the two new questions, in the affected (split, document, chunk)
    before = {(p["split"], p["question"]) for p in prov}
    prov2 = rows(out / "provenance.jsonl")
    fresh = [(p["split"], p["file"], p["chunk"]) for p in prov2 if (p["split"], p["question"]) not in before]
    assert sorted(fresh) == sorted((sp, *where[sp]) for sp in rejected)
    # the journal still holds the rejections; OUT stays the same run
    states = rj.states(out)
    assert states[train_id]["status"] == "rejected" and states[test_id]["status"] == "rejected"
    assert (out / ".datakeg" / "run.json").read_text() == run_json
    # the removed pairs are recorded, not lost
    rej = [x for x in rows(out / "rejects.jsonl") if x.get("reason") == "review_rejected"]
    assert sorted(x["question"] for x in rej) == sorted(d["question"] for d in rejected.values())

    # a second --refill replays everything: no request, the same files
    merged = {sp: (out / f"{sp}.jsonl").read_text() for sp in SPLITS}
    seen = len(server.requests)
    r = gen(server, small_testdoc, out, "--refill")
    assert r.exit_code == 0, r.output
    assert len(server.requests) == seen
    assert {sp: (out / f"{sp}.jsonl").read_text() for sp in SPLITS} == merged


def test_refill_needs_a_run_in_out(server, small_testdoc, tmp_path):
    r = CliRunner().invoke(cli, ["generate", str(small_testdoc), str(tmp_path / "new"), "-p", "openai",
                                 "--base-url", server.url, "-q", "--refill"])
    assert r.exit_code != 0 and "holds no datakeg run" in r.output
    assert not server.requests
    r = CliRunner().invoke(cli, ["generate", str(small_testdoc), str(tmp_path / "new"), "-p", "openai",
                                 "--base-url", server.url, "-q", "--refill", "--fresh"])
    assert r.exit_code != 0 and "--fresh" in r.output


def test_a_replacement_that_repeats_the_rejected_question_is_dropped(server, small_testdoc, tmp_path):
    """The model is told to avoid the rejected question; one that writes it again anyway (the fake
    server's ``duplicates`` fault repeats the first question of the avoid list) has it dropped by the
    gates as a duplicate, and the chunk still gets its replacement."""
    from datakeg.testing.fake_server import FakeLLMServer

    out = tmp_path / "out"
    assert gen(server, small_testdoc, out).exit_code == 0
    target = json.loads((out / "manifest.json").read_text())["totals"]["target"]
    m = ReviewModel(out)
    pid = m.listing(split="valid", kind="row")["ids"][0]
    question = m.detail(pid)["question"]
    m.decide(pid, "reject", 0)
    with FakeLLMServer(faults=["duplicates"]) as bad:
        r = gen(bad, small_testdoc, out, "--resume", "--refill")
        assert r.exit_code == 0, r.output
        assert bad.requests and all(question in prompt(q) for q in bad.requests)
    assert question not in questions(out, "valid")
    assert len(questions(out, "valid")) == target["valid"]
    dup = [x for x in rows(out / "rejects.jsonl") if x.get("reason") == "duplicate" and x.get("question") == question]
    assert dup and all(x["split"] == "valid" for x in dup)


def test_a_run_without_refill_after_one_with_it_warns_and_refill_brings_them_back_for_free(server, small_testdoc,
                                                                                           tmp_path):
    out = tmp_path / "out"
    assert gen(server, small_testdoc, out).exit_code == 0
    target = json.loads((out / "manifest.json").read_text())["totals"]["target"]
    m = ReviewModel(out)
    m.decide(m.listing(split="train", kind="row")["ids"][0], "reject", 0)
    assert gen(server, small_testdoc, out, "--refill").exit_code == 0
    assert len(questions(out, "train")) == target["train"]
    refilled = (out / "train.jsonl").read_text()
    # a standalone merge keeps the manifest's refill counts (the files still hold the replacements)
    assert CliRunner().invoke(cli, ["merge", str(out)]).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["review"]["refilled"] == 1
    seen = len(server.requests)
    r = gen(server, small_testdoc, out)  # no --refill: back to the state without replacements, said so
    assert r.exit_code == 0, r.output
    assert len(questions(out, "train")) == target["train"] - 1
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert any("--refill" in w and "leaves them out" in w for w in warnings), warnings
    assert gen(server, small_testdoc, out, "--refill").exit_code == 0
    assert (out / "train.jsonl").read_text() == refilled and len(server.requests) == seen
