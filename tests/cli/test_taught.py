"""The taught share: a valid/test question counts as learnable when a train pair of its chunk states
its answer (datakeg.curation.taught). The planted fault: a test answer about a fact that no train
answer states (and that the document does not even hold) must be flagged; the same row given a train
answer of its chunk must not."""

from __future__ import annotations

import json

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.curation.taught import TAUGHT_THRESHOLD, is_taught, taught_score
from conftest import TESTDOC


def test_the_rule():
    train = ["The quorblat daemon listens on port 7431 by default.",
             "Logs are rotated every ninety minutes and kept for a week."]
    assert is_taught("Which port does the quorblat daemon use?", "It listens on port 7431.", train)
    # a reworded question, an answer with the taught facts in other order: still taught
    assert is_taught("How often are quorblat logs rotated?", "Every ninety minutes; they are kept a week.", train)
    # the same sentence with another number: not taught (a number is a fact that must be seen)
    assert taught_score("Which port does the quorblat daemon use?", "It listens on port 7432.", train) == 0.0
    # a fact of the chunk that no train answer states
    assert not is_taught("What does quorblat encrypt?", "It encrypts ledger snapshots with AES before upload.",
                         train)
    # one unseen word among five new ones is tolerated, two are not
    assert taught_score("Q?", "daemon listens port rotated minutes", train) == 1.0
    assert taught_score("Q?", "daemon listens port rotated snapshots", train) == 0.8 >= TAUGHT_THRESHOLD
    assert taught_score("Q?", "daemon listens port snapshots ledger", train) == 0.6 < TAUGHT_THRESHOLD
    assert not is_taught("Q?", "daemon listens", [])  # nothing taught in the chunk


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_audit_flags_a_planted_untaught_test_question_and_manifest_and_card_carry_the_share(server, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", str(TESTDOC / "guide"), str(out), "-p", "openai", "--base-url",
                                 server.url, "-q"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    taught = manifest["taught"]
    assert set(taught) >= {"rule", "threshold", "valid", "test", "untaught"}
    assert taught["test"]["traced"] == len(rows(out / "test.jsonl"))
    assert f"test {taught['test']['share']:.0%}" in (out / "README.md").read_text()

    prov = rows(out / "provenance.jsonl")
    train, test = rows(out / "train.jsonl"), rows(out / "test.jsonl")
    src = {(p["split"], p["line"]): (p["file"], p["chunk"]) for p in prov}
    # plant: test line 1 keeps its question (so its provenance holds) but states a fact no train answer has
    test[0]["completion"] = "The quorblat daemon listens on port 7431 and rotates its ledger every ninety minutes."
    # and test line 2 is given, word for word, a train answer of its own chunk: taught whatever it was before
    chunk2 = src[("test", 2)]
    same = [row for k, row in enumerate(train, 1) if src[("train", k)] == chunk2]
    assert same
    test[1]["completion"] = same[0]["completion"]
    (out / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in test))
    r = CliRunner().invoke(cli, ["audit", str(out)])
    assert "taught share" in r.output, r.output
    flagged = [line for line in r.output.splitlines() if line.strip().startswith("test.jsonl line ")]
    assert any(line.strip().startswith("test.jsonl line 1 [") for line in flagged), r.output
    assert not any(line.strip().startswith("test.jsonl line 2 [") for line in flagged), r.output


def test_held_out_taught_writes_learnable_valid_and_test_questions(server, tmp_path):
    """`--held-out taught` against the fake server: >= 95 % of test questions taught (the audit's
    count), where the usual prompt gives far fewer; the valid/test prompts list the chunk's train
    answers; and, checked apart from the rule, every test answer is a run of words of a train answer
    of its own chunk while its question is not a train question."""
    from datakeg.curation.taught import taught_share
    from datakeg.generation.prompts import TAUGHT_MARKER

    shares = {}
    for mode in ("any", "taught"):
        out = tmp_path / mode
        r = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", server.url,
                                     "-q", "--held-out", mode])
        assert r.exit_code == 0, r.output
        report = taught_share(out)
        shares[mode] = report.splits["test"]["taught"] / len(rows(out / "test.jsonl"))
        assert json.loads((out / "manifest.json").read_text())["taught"]["test"]["share"] == \
            report.splits["test"]["share"]
    assert shares["taught"] >= 0.95 and shares["any"] < 0.5, shares
    out = tmp_path / "taught"
    assert len(rows(out / "test.jsonl")) >= 30
    # the prompts: valid/test requests carry the block, train requests never do
    held_prompts = [r["body"]["messages"][-1]["content"] for r in server.requests
                    if "(for the test set)" in r["body"]["messages"][-1]["content"]]
    assert held_prompts and any(TAUGHT_MARKER in p for p in held_prompts)
    assert not any(TAUGHT_MARKER in r["body"]["messages"][-1]["content"] for r in server.requests
                   if "(for the train set)" in r["body"]["messages"][-1]["content"])
    prov = rows(out / "provenance.jsonl")
    src = {(p["split"], p["line"]): (p["file"], p["chunk"]) for p in prov}
    train = rows(out / "train.jsonl")
    by_chunk = {}
    for k, row in enumerate(train, 1):
        by_chunk.setdefault(src[("train", k)], []).append(row)
    words = lambda t: " ".join(t.lower().split())  # noqa: E731
    inside = 0
    test = rows(out / "test.jsonl")
    for k, row in enumerate(test, 1):
        own = by_chunk.get(src[("test", k)], [])
        assert row["prompt"] not in {t["prompt"] for t in train}
        inside += any(words(row["completion"]) in words(t["completion"]) for t in own)
    assert inside / len(test) >= 0.95


def test_held_out_taught_warns_about_chunks_without_train_pairs(tmp_path):
    """With few pairs per chunk, the planner gives some chunks only a valid or test pair: nothing can
    teach those, and the dry run says so (a planted tiny target)."""
    from datakeg.generation.planning import make_plan
    from datakeg.settings import Settings
    from datakeg.sources.discovery import read_documents

    docs, skipped = read_documents(TESTDOC)
    thin = make_plan(docs, skipped, Settings.build(pairs_per_1k=1.5, chunk_size=1500, held_out="taught"))
    bare = sum(1 for dp in thin.docs for t in dp.targets if t["train"] == 0 and t["valid"] + t["test"] > 0)
    assert bare > 0
    assert any(w.startswith(f"--held-out taught: {bare} chunk(s)") for w in thin.warnings)
    thick = make_plan(docs, skipped, Settings.build(held_out="taught"))
    assert not any("--held-out taught" in w for w in thick.warnings)
    plain = make_plan(docs, skipped, Settings.build(pairs_per_1k=1.5, chunk_size=1500))
    assert not any("--held-out taught" in w for w in plain.warnings)


def test_the_offline_model_refuses_held_out_taught(tmp_path):
    """The offline model's few-shot prompt cannot carry the train answers: refused before any work."""
    from click.testing import CliRunner

    from datakeg.cli import cli

    r = CliRunner().invoke(cli, ["generate", str(TESTDOC / "guide"), str(tmp_path / "o"), "-p", "local",
                                 "--held-out", "taught", "-q"])
    assert r.exit_code == 2 and "cannot follow --held-out taught" in r.output
    assert not (tmp_path / "o").exists()
