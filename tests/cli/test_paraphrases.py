"""--paraphrases: K rewordings per train question, train only, never near a held-out question."""

import json

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.testing.fake_server import FakeLLMServer

from conftest import TESTDOC

SPLITS = ("train", "valid", "test")


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def run(srv, out, *extra):
    return CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", srv.url,
                                    "-q", "--pairs-per-1k", "3", *extra])


def test_rewordings_follow_their_original_with_its_answer_in_train_only(tmp_path):
    with FakeLLMServer() as srv:
        assert run(srv, tmp_path / "plain").exit_code == 0
        result = run(srv, tmp_path / "para", "--paraphrases", "2")
    assert result.exit_code == 0, result.output
    assert "Paraphrases: " in result.output
    plain = {s: rows(tmp_path / "plain" / f"{s}.jsonl") for s in SPLITS}
    para = {s: rows(tmp_path / "para" / f"{s}.jsonl") for s in SPLITS}
    assert para["valid"] == plain["valid"] and para["test"] == plain["test"]  # held-out splits untouched
    assert len(para["train"]) == 3 * len(plain["train"])
    for k, original in enumerate(plain["train"]):
        group = para["train"][3 * k:3 * k + 3]
        assert group[0] == original
        assert all(r["completion"] == original["completion"] and r["prompt"] != original["prompt"] and
                   original["prompt"] in r["prompt"] for r in group[1:])
    m = json.loads((tmp_path / "para" / "manifest.json").read_text())
    assert m["paraphrases"]["added"] == 2 * len(plain["train"]) and m["totals"]["delivered"]["train"] == len(plain["train"])
    # a rerun replays the paraphrase requests too
    with FakeLLMServer() as srv:
        assert run(srv, tmp_path / "para", "--paraphrases", "2").exit_code == 0
        assert srv.requests == []


def test_a_rewording_that_is_a_held_out_question_never_reaches_train(tmp_path):
    with FakeLLMServer(faults=["leakyparaphrase"]) as srv:
        result = run(srv, tmp_path / "o", "--paraphrases", "1")
    assert result.exit_code == 0, result.output
    held = {r["prompt"] for s in ("valid", "test") for r in rows(tmp_path / "o" / f"{s}.jsonl")}
    train = [r["prompt"] for r in rows(tmp_path / "o" / "train.jsonl")]
    assert not held & set(train)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["paraphrases"]["dropped"]["leakage"] > 0  # the fault was there and was caught
    rejects = [json.loads(l) for l in (tmp_path / "o" / "rejects.jsonl").read_text().split("\n") if l]
    caught = [r for r in rejects if r.get("reason") == "paraphrase_leakage"]
    assert caught and all(r["question"] in held for r in caught)
