"""Every delivered pair can be traced to its source file, chunk and section (OUT/provenance.jsonl,
OUT/chunks.jsonl), and the trace stays true through the leakage audit's removals and backfill,
``audit --remove``, a hand edit and ``merge``.

The independent truth: the fake server writes every answer from words of the excerpt it was sent,
so the chunk a row is traced to must hold the row's answer (as a run of words), and another
chunk of the corpus almost never does.
"""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.dataset.provenance import load
from conftest import TESTDOC, shared_text_docs

SPLITS = ("train", "valid", "test")


def words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def check_traced(out) -> dict[str, int]:
    """Each merged row has a provenance line whose chunk holds its answer; returns rows per split."""
    chunks = {(c["file"], c["chunk"]): c for c in rows(out / "chunks.jsonl")}
    prov = rows(out / "provenance.jsonl")
    sources = load(out)
    counts = {}
    for split in SPLITS:
        merged = rows(out / f"{split}.jsonl")
        mine = [p for p in prov if p["split"] == split]
        assert [p["line"] for p in mine] == list(range(1, len(merged) + 1))
        for row, p in zip(merged, mine):
            assert p["question"] == row["prompt"]
            chunk = chunks[(p["file"], p["chunk"])]
            assert p["section"] == chunk["section"]
            assert words(row["completion"]) in words(chunk["text"]), (split, p, row)
            assert sources[(split, p["line"])].text == chunk["text"]
        counts[split] = len(merged)
    return counts


def test_provenance_survives_audit_removal_backfill_and_merge(server, tmp_path):
    src = shared_text_docs(tmp_path / "docs")  # the leakage audit removes and backfills pairs
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", server.url, "-q"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["leakage_audit"]["removed"].values()) > 0  # backfill happened
    before = check_traced(out)
    # the chunks traced are the documents' own: b.md's rows come from b.md
    assert {p["file"] for p in rows(out / "provenance.jsonl")} == {"a.md", "b.md", "c.md"}

    # plant a leak at the top of b's test file (a train question of a.md, with b's own answer):
    # audit --remove drops it and every later row of that file moves up one line
    test_path = out / "b_test.jsonl"
    test_lines = test_path.read_text().splitlines()
    planted = json.loads(test_lines[0])
    planted["prompt"] = rows(out / "a_train.jsonl")[0]["prompt"]
    test_path.write_text("\n".join([json.dumps(planted)] + test_lines[1:]) + "\n")
    r = CliRunner().invoke(cli, ["audit", str(out), "--remove"])
    assert r.exit_code == 0, r.output
    after = check_traced(out)
    assert after["test"] == before["test"] - 1 and after["train"] == before["train"]

    # a row removed by hand from a per-file output, then merge
    path = out / "b_train.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    removed = json.loads(lines[0])["prompt"]
    path.write_text("".join(lines[1:]))
    r = CliRunner().invoke(cli, ["merge", str(out)])
    assert r.exit_code == 0, r.output
    check_traced(out)
    assert removed not in {p["question"] for p in rows(out / "provenance.jsonl") if p["file"] == "b.md"}


def test_a_row_edited_by_hand_is_not_given_a_wrong_source(server, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["generate", str(TESTDOC / "guide"), str(out), "-p", "openai", "--base-url",
                                 server.url, "-q"])
    assert r.exit_code == 0, r.output
    stem = json.loads((out / "manifest.json").read_text())["files"][0]["output"]
    path = out / f"{stem}_train.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    first["prompt"] = "A question nobody generated?"
    path.write_text("\n".join([json.dumps(first)] + path.read_text().splitlines()[1:]) + "\n")
    assert CliRunner().invoke(cli, ["merge", str(out)]).exit_code == 0
    prov = rows(out / "provenance.jsonl")
    edited = [p for p in prov if p["question"] == "A question nobody generated?"]
    assert len(edited) == 1 and edited[0]["chunk"] is None and edited[0]["section"] is None
    assert all(p["chunk"] is not None for p in prov if p is not edited[0])
