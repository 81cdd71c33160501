"""`datakeg eval --rag SRC --open-book`: closed book, RAG and open book side by side.

The independent truths: the corpus is built so that each chunk has words no other chunk has, so a
question about a span of one chunk is answered by that chunk only; the fake server answers a
RAG/open-book prompt from the passages it is given (the exact reference when the source chunk is
among them, "I do not know." otherwise) and closed book with "I do not know.".
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from datakeg.cli import cli

pytest.importorskip("bm25s")


def build_corpus(root, seed=7, docs=3, sections=3):
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
                    for _ in range(4000)})
    rng.shuffle(vocab)
    words = iter(vocab)
    root.mkdir()
    for d in range(docs):
        parts = [f"# Tool {d}\n"]
        for s in range(sections):
            sentences = [" ".join(next(words) for _ in range(8)).capitalize() + "." for _ in range(8)]
            parts.append(f"## Part {s}\n\n" + " ".join(sentences) + "\n")
        (root / f"tool{d}.md").write_text("\n".join(parts))
    return root


def test_rag_retrieves_the_source_chunk_and_the_report_has_every_column(server, tmp_path):
    src = build_corpus(tmp_path / "docs")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", server.url,
                                 "--chunk-size", "600", "-q"])
    assert r.exit_code == 0, r.output
    n_test = len((out / "test.jsonl").read_text().splitlines())
    n_valid = len((out / "valid.jsonl").read_text().splitlines())
    assert n_test >= 3 and n_valid >= 3
    prefix = tmp_path / "rep"
    # --chunk-size left out: taken from the manifest beside the test file (600), as generate chunked
    r = CliRunner().invoke(cli, ["eval", str(out / "valid.jsonl"), str(out / "test.jsonl"), "-p", "openai",
                                 "--base-url", server.url, "-m", "fake-model", "--compare", "qwen2.5:3b",
                                 "--rag", str(src), "--rag-k", "2", "--open-book", "--report", str(prefix)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(prefix.with_suffix(".json").read_text())
    modes = [(x["summary"]["role"], x["summary"]["mode"]) for x in data["reports"]]
    assert modes == [("model", "closed"), ("model", "rag"), ("model", "open"),
                     ("compare", "closed"), ("compare", "rag"), ("compare", "open"), ("baseline", "closed")]
    closed, rag, open_ = data["reports"][:3]
    # every question's source chunk was retrieved, and the context answered it exactly
    assert data["rag_hit_rate"] == 1.0
    assert all(i["hit"] is True and i["source"] in i["context"] and len(i["context"]) == 2 for i in rag["items"])
    assert all(i["context"] == [i["source"]] for i in open_["items"])
    assert rag["summary"]["exact_match"] == 1.0 and open_["summary"]["exact_match"] == 1.0
    assert closed["summary"]["token_f1"] == 0.0  # "I do not know."
    # per split of the questions (valid, test, all) x (model, compare, echo), all columns filled
    side = data["side_by_side"]
    assert {(row["split"], row["role"]) for row in side} == {
        (sp, role) for sp in ("valid", "test", "all") for role in ("model", "compare", "baseline")}
    for row in side:
        if row["role"] == "baseline":
            assert row["closed_f1"] is not None and row["rag_f1"] is None
            continue
        assert row["closed_f1"] == 0.0 and row["rag_f1"] == 1.0 and row["open_f1"] == 1.0
        assert row["closed_of_rag"] == 0.0 and row["rag_hit_rate"] == 1.0
    counts = {row["split"]: row["rag_hit_known"] for row in side if row["role"] == "model"}
    assert counts == {"valid": n_valid, "test": n_test, "all": n_valid + n_test}
    assert data["headline"][0].startswith("fake-model: closed book reaches 0% of RAG (token F1")
    md = prefix.with_suffix(".md").read_text()
    for column in ("closed book F1", "RAG F1", "open book F1", "closed/RAG", "RAG hit rate", "echo baseline",
                   "closed book reaches"):
        assert column in md
    assert "fake-model: closed book reaches 0% of RAG" in r.output
    # the terminal tables name every mode (rich would take "[open book]" for a style tag)
    assert "fake-model [open book]" in r.output and "fake-model [RAG]" in r.output
    assert "Retrieval hit rate (source chunk among the top 2): 1.00" in r.output


def test_rag_finds_a_planted_chunk_that_alone_answers(tmp_path):
    from datakeg.evaluation.rag import Index

    src = build_corpus(tmp_path / "docs", seed=3)
    (src / "ops.md").write_text("# Operations\n\n## Daemon\n\nThe quorblat daemon listens on port 7431 and "
                                "rotates its ledger every ninety minutes.\n")
    index = Index.build(src, 600)
    assert len(index.passages) > 9
    got = index.search("Which port does the quorblat daemon listen on?", 3)
    assert (got[0].file, got[0].section) == ("ops.md", "Operations > Daemon")
    assert "7431" in got[0].text and "7431" not in " ".join(p.text for p in got[1:])


def test_open_book_without_provenance_is_refused_with_a_hint(server, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "What is X?", "completion": "X is Y."}) + "\n")
    r = CliRunner().invoke(cli, ["eval", str(test), "-p", "openai", "--base-url", server.url, "-m", "fake-model",
                                 "--open-book", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 1
    assert "--open-book needs the provenance" in r.output and "datakeg merge" in r.output
