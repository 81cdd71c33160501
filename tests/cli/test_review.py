"""Review decisions are data (datakeg.dataset.review_journal, datakeg.review.model): they survive a
restart, `merge` and `generate --resume` with another document; a stale version, an edit that
fails a gate or leaks across splits are refused and leave no trace; merge applies them in the
row's own shape. No web server needed (the browser tests are tests/cli/test_review_browser.py).

The independent truth is always the merged files on disk, read as plain JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.dataset import review_journal as rj
from datakeg.dataset.records import from_row
from datakeg.review.model import Refused, ReviewModel
from datakeg.testing.fake_server import FakeLLMServer
from conftest import ROOT

SMALL = ("README.md", "guide/README.md", "guide/faq.txt")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def questions(out: Path, split: str) -> list[str]:
    return [from_row(r).question for r in rows(out / f"{split}.jsonl")]


def generate(src: Path, out: Path, *extra: str, faults=None) -> None:
    with FakeLLMServer(faults=faults) as srv:
        r = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q",
                                     *extra], catch_exceptions=False)
    assert r.exit_code == 0, r.output


def copy_docs(dest: Path, names) -> Path:
    for rel in names:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "testdoc" / rel, dest / rel)
    return dest


@pytest.fixture
def out(tmp_path) -> Path:
    src = copy_docs(tmp_path / "docs", SMALL)
    out = tmp_path / "out"
    generate(src, out, faults=["junk"])
    return out


def test_decisions_survive_restart_merge_and_resume_with_another_document(out, tmp_path):
    m = ReviewModel(out)
    test_ids = m.listing(split="test", kind="row")["ids"]
    train_ids = m.listing(split="train", kind="row")["ids"]
    rejected = m.detail(test_ids[0])["question"]
    m.decide(test_ids[0], "reject", 0)
    edited = "How do you install the development version of Tallyho from a clone?"
    d = m.decide(train_ids[-1], "edit", 0, question=edited)
    assert d["question"] == edited and d["status"] == "kept" and d["version"] == 1
    before = {s: len(rows(out / f"{s}.jsonl")) for s in ("train", "valid", "test")}

    # a restart sees the same states (the journal is the only memory)
    again = ReviewModel(out)
    assert again.detail(test_ids[0])["status"] == "rejected"
    assert again.detail(train_ids[-1])["question"] == edited

    r = CliRunner().invoke(cli, ["merge", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and "1 edited, 1 rejected" in r.output, r.output
    assert rejected not in questions(out, "test") and edited in questions(out, "train")
    assert len(questions(out, "test")) == before["test"] - 1

    # generate --resume with one more document: the old documents' calls are replayed, the merge
    # applies the journal again; the rejected pair is not backfilled
    copy_docs(tmp_path / "docs", ("CHANGELOG.md",))
    generate(tmp_path / "docs", out, "--resume", faults=["junk"])
    assert rejected not in questions(out, "test") and edited in questions(out, "train")
    changelog = sum(1 for p in rows(out / "provenance.jsonl") if p["split"] == "test" and p["file"] == "CHANGELOG.md")
    assert len(questions(out, "test")) == before["test"] - 1 + changelog
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review"]["applied_rejected"] == 1 and manifest["review"]["applied_edited"] == 1
    # provenance still traces the edited row to its chunk
    prov = [p for p in rows(out / "provenance.jsonl") if p["question"] == edited]
    assert len(prov) == 1 and prov[0]["chunk"] is not None and prov[0]["pair"] == train_ids[-1]


def test_stale_version_undo_and_a_torn_line(out):
    m = ReviewModel(out)
    pid = m.listing(split="valid", kind="row")["ids"][0]
    m.decide(pid, "keep", 0)
    with pytest.raises(Refused) as exc:
        m.decide(pid, "reject", 0)  # a second tab still at version 0
    assert exc.value.status == 409 and "another tab" in exc.value.message
    assert m.detail(pid)["status"] == "kept"
    m.decide(pid, "reject", 1)
    m.decide(pid, "undo", 2)
    assert m.detail(pid)["status"] == "kept"
    m.decide(pid, "undo", 3)
    assert m.detail(pid)["status"] == "pending"
    with pytest.raises(Refused):
        m.decide(pid, "undo", 4)
    m.decide(pid, "note", 4, note="check the wording")
    with open(rj.journal_path(out), "a", encoding="utf-8") as fh:
        fh.write('{"pair": "' + pid + '", "status": "rejec')  # a crash in the middle of a line
    fresh = ReviewModel(out)
    assert fresh.detail(pid)["status"] == "pending" and fresh.detail(pid)["note"] == "check the wording"
    assert rj.summary(out)["noted"] == 1


def test_refused_edits_leave_no_trace(out):
    m = ReviewModel(out)
    train = m.listing(split="train", kind="row")["ids"]
    test = m.listing(split="test", kind="row")["ids"]
    train_file = m.detail(train[0])["file"]
    other_test = next(i for i in test if m.detail(i)["file"] != train_file)
    copied = m.detail(train[0])["question"]
    lines = len(rj.read(out))
    with pytest.raises(Refused) as exc:  # a test question that copies a train question of another document
        m.decide(other_test, "edit", 0, question=copied)
    assert "leakage audit" in exc.value.message and "train" in exc.value.message
    test_q = m.detail(other_test)["question"]
    with pytest.raises(Refused) as exc:  # the other way round: a train edit that a test question would leak
        m.decide(train[0], "edit", 0, question=test_q)
    assert "leakage audit" in exc.value.message and "test" in exc.value.message
    with pytest.raises(Refused) as exc:
        m.decide(train[0], "edit", 0, question="What does this section say about the options?")
    assert "dangling" in exc.value.message
    with pytest.raises(Refused) as exc:
        m.decide(train[0], "edit", 0, answer="The answer mentions zebras and 4711 unicorns.")
    assert "ungrounded" in exc.value.message
    assert len(rj.read(out)) == lines and m.detail(train[0])["version"] == 0


def test_bulk_restore_and_chat_rows(tmp_path):
    src = copy_docs(tmp_path / "docs", SMALL)
    out = tmp_path / "out"
    generate(src, out, "--format", "chat", "--system-message", "You answer about Tallyho.", faults=["junk"])
    m = ReviewModel(out)
    faq_valid = m.listing(split="valid", file="guide/faq.txt", kind="row")
    n = faq_valid["counts"]["shown"]
    assert n > 0
    with pytest.raises(Refused):
        m.bulk("reject", {"split": "valid", "file": "guide/faq.txt", "kind": "row"}, expected=n + 1)
    assert m.bulk("reject", {"split": "valid", "file": "guide/faq.txt", "kind": "row"}, expected=n)["changed"] == n
    dropped = m.listing(split="train", kind="reject", file="README.md")["ids"][0]
    restored = m.detail(dropped)
    m.decide(dropped, "restore", 0)
    edit_id = m.listing(split="train", kind="row", file="README.md")["ids"][0]
    new_answer = m.detail(edit_id)["answer"].split(" ")
    new_answer = " ".join(new_answer[: max(3, len(new_answer) - 2)])
    m.decide(edit_id, "edit", 0, answer=new_answer)
    m.apply()
    valid_faq = [p for p in rows(out / "provenance.jsonl") if p["split"] == "valid" and p["file"] == "guide/faq.txt"]
    assert valid_faq == []
    train = rows(out / "train.jsonl")
    for row in train:  # every row keeps the run's shape and system message
        assert row["messages"][0] == {"role": "system", "content": "You answer about Tallyho."}
    assert any(r["messages"][1]["content"] == restored["question"] for r in train)
    assert any(r["messages"][2]["content"] == new_answer for r in train)
    # the restored pair lands after its document's rows, traced to its chunk
    prov = rows(out / "provenance.jsonl")
    at = next(p for p in prov if p["question"] == restored["question"] and p["split"] == "train")
    assert at["file"] == "README.md" and at["chunk"] == restored["chunk"]
    r = CliRunner().invoke(cli, ["validate", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and "all applied" in r.output, r.output


def test_without_the_extra_it_says_which_to_install(out, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the [review] extra were not installed
    r = CliRunner().invoke(cli, ["review", str(out)])
    assert r.exit_code != 0
    assert "pip install 'datakeg[review]'" in r.output and "Traceback" not in r.output
    assert not rj.journal_path(out).exists()


def test_multi_turn_rows_show_every_turn_and_keep_them_when_edited(tmp_path):
    src = copy_docs(tmp_path / "docs", SMALL)
    out = tmp_path / "out"
    generate(src, out, "--task", "conversation")
    m = ReviewModel(out)
    pid = m.listing(split="train", kind="row", file="README.md")["ids"][0]
    d = m.detail(pid)
    line = next(r for r in rows(out / "train.jsonl") if r["messages"][0]["content"] == d["question"])
    later = [t for t in line["messages"] if t["role"] != "system"][2:]
    assert later and d["turns"] == later
    m.decide(pid, "edit", 0, question="Which tool counts the words, lines and headings of Markdown files?")
    m.apply()
    edited = next(r for r in rows(out / "train.jsonl")
                  if r["messages"][0]["content"] == "Which tool counts the words, lines and headings of Markdown files?")
    assert edited["messages"][1:] == line["messages"][1:]


def test_a_restored_pair_in_a_conversation_dataset_carries_no_other_rows_turns(tmp_path):
    """A restored dropped pair takes the shape of a row of its document, never that row's later
    turns: they belong to another conversation (of train, when the restore is in valid), and
    copying them into valid or test would leak train text."""
    src = copy_docs(tmp_path / "docs", SMALL)
    out = tmp_path / "out"
    generate(src, out, "--task", "conversation", faults=["junk"])
    m = ReviewModel(out)
    dropped = m.listing(kind="reject")["ids"]
    assert dropped, "the junk fault leaves dropped pairs to restore"
    pid = dropped[0]
    d = m.detail(pid)
    m.decide(pid, "restore", 0)
    m.apply()
    split = d["split"]
    restored = [r for r in rows(out / f"{split}.jsonl")
                if next(t for t in r["messages"] if t["role"] == "user")["content"] == d["question"]]
    assert len(restored) == 1
    turns = [t for t in restored[0]["messages"] if t["role"] != "system"]
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["content"] == d["answer"]
    others = {t["content"] for s in ("train", "valid", "test") for r in rows(out / f"{s}.jsonl") if r is not restored[0]
              for t in r["messages"] if t["role"] == "user"}
    assert all(t["content"] not in others or t["content"] == d["question"] for t in turns if t["role"] == "user")


def test_apply_refreshes_the_taught_share_in_manifest_and_card(out):
    """The page's Apply rebuilds the merged files: the manifest's taught share (and the card made
    from it) must describe the rows left, as after `datakeg merge`."""
    from datakeg.curation.taught import manifest_entry, taught_share

    m = ReviewModel(out)
    before = json.loads((out / "manifest.json").read_text())["taught"]["valid"]
    ids = m.listing(split="valid", kind="row")["ids"]
    for pid in ids[: max(1, len(ids) // 2)]:
        m.decide(pid, "reject", 0)
    m.apply()
    now = json.loads((out / "manifest.json").read_text())["taught"]
    truth = manifest_entry(taught_share(out))
    assert now["valid"] == truth["valid"] and now["valid"]["traced"] < before["traced"]
    card = (out / "README.md").read_text()
    assert f"valid {truth['valid']['share']:.0%} ({truth['valid']['taught']} of {truth['valid']['traced']})" in card


def test_audit_sees_the_rows_the_review_left(out):
    """`datakeg audit` audits the merged rows as the review left them: a rejected row is not
    audited and does not shift the line numbers; a planted leak is reported at its line in
    valid.jsonl, and --remove takes out exactly it."""
    m = ReviewModel(out)
    first_valid = m.listing(split="valid", kind="row")["ids"][0]
    m.decide(first_valid, "reject", 0)
    m.apply()
    # plant a leak: a train question with a valid answer, at the end of the last document's valid file
    stems = [f["output"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    train_q = rows(out / "train.jsonl")[0]["prompt"]
    path = out / f"{stems[-1]}_valid.jsonl"
    planted = dict(rows(path)[-1], prompt=train_q)
    path.write_text(path.read_text() + json.dumps(planted) + "\n")
    CliRunner().invoke(cli, ["merge", str(out)], catch_exceptions=False)
    valid = [r["prompt"] for r in rows(out / "valid.jsonl")]
    line = valid.index(train_q) + 1
    r = CliRunner().invoke(cli, ["audit", str(out)])
    assert r.exit_code == 1 and f"valid.jsonl line {line} [valid~train" in r.output, r.output
    r = CliRunner().invoke(cli, ["audit", str(out), "--remove"])
    assert r.exit_code == 0 and "removed 1 pair(s)" in r.output, r.output
    assert [q for q in (r_["prompt"] for r_ in rows(out / "valid.jsonl"))] == [q for q in valid if q != train_q]
