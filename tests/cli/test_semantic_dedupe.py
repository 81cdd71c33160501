"""--semantic-dedupe end to end: a server that rewords earlier questions (the ``reworded`` fault)
gets past the TF-IDF audit, and not past the sentence-embedding one; `datakeg audit` finds and
removes a planted rewording; bad settings stop before any work."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.curation.leakage import tfidf_matrix
from datakeg.curation.quality import normalize_question
from datakeg.dataset.records import from_row
from datakeg.curation.semantic import _latin_like
from datakeg.testing.fake_server import REWORDED, FakeLLMServer

from conftest import TESTDOC, skip_without_the_semantic_extra

SPLITS = ("train", "valid", "test")
PLANTED = re.compile("^" + re.escape(REWORDED).replace(re.escape("{span}"), "(.*)") + "$")


@pytest.fixture
def semantic_extra():
    skip_without_the_semantic_extra()


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DATAKEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "semantic-cache"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def delivered(out: Path) -> list[tuple[str, str]]:
    return [(sp, from_row(json.loads(line)).question) for sp in SPLITS
            for line in (out / f"{sp}.jsonl").read_text(encoding="utf-8").splitlines()]


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def test_reworded_questions_pass_tfidf_but_not_semantic_dedupe(tmp_path, semantic_extra):
    with FakeLLMServer(faults=["reworded:3"]) as srv:
        plain = run("generate", TESTDOC, tmp_path / "plain", "-p", "openai", "--base-url", srv.url, "-q")
        assert plain.exit_code == 0, plain.output
        semantic = run("generate", TESTDOC, tmp_path / "sem", "-p", "openai", "--base-url", srv.url, "-q",
                       "--semantic-dedupe")
        assert semantic.exit_code == 0, semantic.output
    # the fault is a real gap: the TF-IDF audit lets planted rewordings into the splits
    leaked = [q for _, q in delivered(tmp_path / "plain") if PLANTED.match(q)]
    assert len(leaked) >= 5
    for q in leaked:  # each is a rewording of "What is said about X?", under the 0.9 TF-IDF rule
        original = "What is said about " + PLANTED.match(q).group(1) + "?"
        x = tfidf_matrix([normalize_question(q), normalize_question(original)])
        assert (x[0] @ x[1].T).toarray()[0, 0] < 0.9

    out = tmp_path / "sem"
    questions = [q for _, q in delivered(out)]
    # the rule, checked by brute force with sentence-transformers itself: no two delivered questions
    # in Latin script (what the packaged English model compares) are within 0.85 of each other
    from sentence_transformers import SentenceTransformer

    from datakeg.curation.semantic import packaged_model_dir

    latin = [q for q in questions if _latin_like(q)]
    e = SentenceTransformer(str(packaged_model_dir()), local_files_only=True).encode(latin, normalize_embeddings=True)
    sim = e @ e.T
    np.fill_diagonal(sim, 0)
    assert sim.max() < 0.85
    # so no planted rewording in Latin script is left beside the question it rewords
    for q in questions:
        if PLANTED.match(q) and _latin_like(q):
            assert "What is said about " + PLANTED.match(q).group(1) + "?" not in questions
    removed = [r for r in rejects(out) if r.get("reason", "").startswith("semantic_")]
    assert all(r["similarity"] >= 0.85 and r["similar_question"] in questions for r in removed)
    planted = [r for r in removed if PLANTED.match(r["question"])]
    # most name the question they reword (or a kept rewording of it); the fake server's questions all
    # share one frame, so a few are closest to another question
    assert sum(PLANTED.match(r["question"]).group(1) in r["similar_question"] for r in planted) >= 5
    manifest = json.loads((out / "manifest.json").read_text())
    audit = manifest["leakage_audit"]
    assert audit["semantic"]["model"] == "all-MiniLM-L6-v2" and audit["semantic"]["threshold"] == 0.85
    assert sum(audit["semantic"]["removed"].values()) == len(removed)
    assert audit["semantic"]["removed"].get("duplicate", 0) == sum(r["reason"] == "semantic_duplicate"
                                                                    for r in removed)
    dropped = manifest["totals"]["dropped"]
    assert dropped.get("semantic_leakage", 0) + dropped.get("semantic_duplicate", 0) == len(removed)
    assert manifest["settings"]["semantic_dedupe"] is True
    # removed pairs were backfilled: at most 2% short of the targets
    t = manifest["totals"]
    assert sum(t["delivered"].values()) >= 0.98 * sum(t["target"].values())


def test_audit_command_finds_and_removes_a_planted_rewording(tmp_path, server, semantic_extra):
    out = tmp_path / "out"
    assert run("generate", TESTDOC / "guide", out, "-p", "openai", "--base-url", server.url, "-q",
               "--semantic-dedupe").exit_code == 0
    train_q = next(q for sp, q in delivered(out) if sp == "train" and q.startswith("What is said about "))
    planted = REWORDED.format(span=train_q[len("What is said about "):-1])
    test_file = next(out.glob("*_test.jsonl"))
    before = test_file.read_text(encoding="utf-8").splitlines()
    test_file.write_text("\n".join(before + [json.dumps({"prompt": planted, "completion": "An answer."})]) + "\n",
                         encoding="utf-8")
    assert run("merge", out).exit_code == 0

    plain = run("audit", out)
    assert plain.exit_code == 0, plain.output  # TF-IDF sees nothing
    found = run("audit", out, "--semantic-dedupe")
    assert found.exit_code == 1, found.output
    assert "1 leaking question(s)" in found.output and "[test~train, semantic" in found.output
    assert planted in found.output
    removed = run("audit", out, "--semantic-dedupe", "--remove")
    assert removed.exit_code == 0 and "removed 1 pair(s)" in removed.output
    assert test_file.read_text(encoding="utf-8").splitlines() == before
    assert planted not in (out / "test.jsonl").read_text(encoding="utf-8")


def test_bad_semantic_settings_stop_before_any_work(tmp_path, server):
    out = tmp_path / "out"
    base = ["generate", TESTDOC, out, "-p", "openai", "--base-url", server.url]
    result = run(*base, "--semantic-model", tmp_path)
    assert result.exit_code == 2 and "--semantic-model needs --semantic-dedupe" in result.output
    (tmp_path / "empty").mkdir()
    result = run(*base, "--semantic-dedupe", "--semantic-model", tmp_path / "empty")
    assert result.exit_code == 2 and "not a model folder" in result.output
    result = run(*base, "--semantic-dedupe", "--semantic-threshold", "0")
    assert result.exit_code == 2 and "--semantic-threshold" in result.output
    result = run(*base, "--semantic-dedupe", "--no-audit")
    assert result.exit_code == 2 and "--no-audit" in result.output
    assert not out.exists() and not server.requests
