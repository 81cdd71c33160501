"""Task files end to end: the real CLI, the real openai client, real HTTP to the fake server.

A custom task's instructions, audience and examples reach the model; a changed task is another run;
the asked mix of kinds is what the files deliver; a bad task file stops before any request; a
3-turn conversation dataset round-trips generate -> validate -> convert -> trl's and mlx-lm's loaders
and the leakage audit catches a test conversation whose first question copies a train question."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.generation.task import load_task
from datakeg.testing.fake_server import FakeLLMServer

from conftest import TESTDOC

SPLITS = ("train", "valid", "test")


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def gen(srv, src, out, *extra):
    return run(["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q", *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prompts(srv) -> list[str]:
    return [m["content"] for r in srv.requests for m in r["body"]["messages"] if m["role"] == "user"]


CUSTOM = load_task("mix").text.replace(
    'audiences = ["a new user trying the software for the first time", "an operator debugging a failure"]',
    'audiences = ["a night-shift operator at Zorgcorp"]').replace(
    "- Every pair covers a different fact.", "- Every pair covers a different fact.\n- Never mention the ZQX rule.").replace(
    "How do I make Tallyho count only the headings of a Markdown file?",
    "How do I make Quibble print only its warnings?")


def test_custom_task_reaches_the_model_and_a_changed_task_is_another_run(tmp_path):
    task = tmp_path / "mytask.toml"
    task.write_text(CUSTOM)
    out = tmp_path / "out"
    with FakeLLMServer() as srv:
        result = gen(srv, TESTDOC, out, "--task", str(task))
        assert result.exit_code == 0, result.output
        sent = prompts(srv)
        assert sent and all("Write every question as a night-shift operator at Zorgcorp would ask it" in p and
                            "- Never mention the ZQX rule." in p and
                            "How do I make Quibble print only its warnings?" in p for p in sent)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["task"]["name"] == "mix" and manifest["task"]["sha256"] == load_task(task).sha256
        assert manifest["task"]["audiences"] == ["a night-shift operator at Zorgcorp"]
        card = (out / "README.md").read_text()
        assert load_task(task).sha256[:12] in card
        n = len(srv.requests)

        # the same content elsewhere is the same run: everything replays
        moved = tmp_path / "elsewhere" / "copy.toml"
        moved.parent.mkdir()
        moved.write_text("# my copy\n" + CUSTOM)
        assert gen(srv, TESTDOC, out, "--task", str(moved)).exit_code == 0
        assert len(srv.requests) == n

        # one word changed: refused without --resume, before any request
        task.write_text(CUSTOM.replace("Never mention the ZQX rule.", "Never mention the ZQY rule."))
        result = gen(srv, TESTDOC, out, "--task", str(task))
        assert result.exit_code == 2 and "task changed" in result.output
        assert len(srv.requests) == n
        # --resume: every prompt changed with that word, so every request is asked again
        assert gen(srv, TESTDOC, out, "--task", str(task), "--resume").exit_code == 0
        assert len(srv.requests) > n
        assert json.loads((out / "manifest.json").read_text())["totals"]["replayed_from_journal"] == 0
        n = len(srv.requests)

        # a changed description is a changed task too, but no prompt shows it: --resume replays everything
        task.write_text(task.read_text().replace('description = "Pairs of six', 'description = "Pairs of 6'))
        assert gen(srv, TESTDOC, out, "--task", str(task)).exit_code == 2
        assert gen(srv, TESTDOC, out, "--task", str(task), "--resume").exit_code == 0
        assert len(srv.requests) == n
        assert json.loads((out / "manifest.json").read_text())["totals"]["replayed_from_journal"] > 0


def test_the_mix_is_met_on_300_pairs(tmp_path):
    task = tmp_path / "kinds.toml"
    task.write_text(load_task("mix").text.split("[kinds]")[0] + "[kinds]\nfactual = 40\nhow-to = 25\n"
                    "troubleshooting = 15\nmigration = { weight = 12, description = \"asks how to move from "
                    "an older version\" }\ncomparison = 8\n\n" +
                    "[[examples]]" + load_task("mix").text.split("[[examples]]", 1)[1].replace(
                        'kind = "troubleshooting"', 'kind = "migration"'))
    weights = {"factual": .40, "how-to": .25, "troubleshooting": .15, "migration": .12, "comparison": .08}
    assert load_task(task).mix == pytest.approx(weights)
    out = tmp_path / "out"
    with FakeLLMServer() as srv:
        result = gen(srv, TESTDOC, out, "--task", str(task), "--pairs-per-1k", "16")
        assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    every = Counter()
    for split in SPLITS:
        # the independent truth: the fake model opens each question with the kind it wrote it as
        kinds = Counter(re.match(r"^\[([^\]]+)\] ", r["prompt"]).group(1) for r in rows(out / f"{split}.jsonl"))
        every.update(kinds)
        delivered = manifest["coverage"]["task_kinds"][split]
        assert {k: v["delivered"] for k, v in delivered.items()} == {k: kinds[k] for k in weights}
        total = sum(kinds.values())
        for k, w in weights.items():
            if w >= 0.10:
                assert abs(kinds[k] / total - w) <= 0.05, (split, k, kinds[k], total)
    total = sum(every.values())
    assert total >= 300
    for k, w in weights.items():
        assert abs(every[k] / total - w) <= 0.05, (k, every[k], total)


@pytest.mark.parametrize("text,needle", [
    ('name = "x"\ndescription = "d"\ninstructions = "Write {{ count }} pairs about {{ exerpt }}"\n',
     "unknown field {{ exerpt }}"),
    ('name = "x"\ndescription = "d"\ninstructions = "Write {{ count }} pairs"\n', "never shows the excerpt"),
    ('name = "x"\ninstructions = "{{ excerpt }}"\n', "the field 'description' is missing"),
    ('name = "x"\ndescription = "d"\ninstructions = "{{ excerpt }} {{ kinds }}"\n[kinds]\nfactual = -1\n',
     "must be a positive number"),
    ('name = "x"\ndescription = "d\ninstructions = "{{ excerpt }}"\n', "TOML syntax error"),
])
def test_a_bad_task_file_stops_before_any_request(tmp_path, text, needle):
    task = tmp_path / "bad.toml"
    task.write_text(text)
    with FakeLLMServer() as srv:
        result = gen(srv, TESTDOC, tmp_path / "out", "--task", str(task))
        assert not srv.requests
    assert result.exit_code == 2
    assert needle in result.output.splitlines()[0], result.output
    assert not (tmp_path / "out").exists()


def test_conversations_round_trip_and_the_audit_checks_first_turns(tmp_path):
    out = tmp_path / "out"
    with FakeLLMServer() as srv:
        result = gen(srv, TESTDOC, out, "--task", "conversation")
        assert result.exit_code == 0, result.output
        assert all("Each conversation has exactly 3 user turns" in p for p in prompts(srv))
    train = rows(out / "train.jsonl")
    assert train and all([m["role"] for m in r["messages"]] == ["user", "assistant"] * 3 for r in train)
    assert json.loads((out / "manifest.json").read_text())["settings"]["format"] == "chat"
    assert "Row format: `chat`" in (out / "README.md").read_text()
    assert run(["validate", str(out)]).exit_code == 0
    assert run(["audit", str(out)]).exit_code == 0

    # convert: every template renders the three turns (byte-identity with the official templates is
    # tests/cli/test_convert.py's, 3-turn rows included)
    for name, marker in (("chatml", "<|im_start|>user"), ("llama3", "<|start_header_id|>user"),
                         ("gemma", "<start_of_turn>user"), ("sharegpt", None)):
        dst = tmp_path / f"train.{name}.jsonl"
        assert run(["convert", str(out / "train.jsonl"), str(dst), "-t", name]).exit_code == 0
        converted = rows(dst)
        assert len(converted) == len(train)
        if marker:
            assert all(r["text"].count(marker) == 3 for r in converted)
        else:
            assert all([t["from"] for t in r["conversations"]] == ["human", "gpt"] * 3 for r in converted)
            sharegpt = dst

    # the loaders of the trainers people use read the rows as 3-turn conversations
    from datakeg.providers.local import bundled_tokenizer
    from datakeg.support.chat_template import ensure_chat_template

    tok = bundled_tokenizer()
    ensure_chat_template(tok)  # a base model's tokenizer: ChatML, as finetune gives it
    trl = pytest.importorskip("trl.data_utils", reason="needs trl (the [torch] extra)")
    for row in train[:5]:
        assert trl.is_conversational(row)
        text = trl.maybe_apply_chat_template(row, tok)["text"]
        assert text.count("<|im_start|>user") == 3 and row["messages"][-1]["content"].strip() in text
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("json", data_files=str(sharegpt), split="train")
    assert len(loaded) == len(train) and len(loaded[0]["conversations"]) == 6
    mlx = pytest.importorskip("mlx_lm.tuner.datasets", reason="needs the [mlx] extra")
    ds = mlx.ChatDataset(train[:5], tok, mask_prompt=True)
    processed = ds.process(ds[0])
    tokens = processed[0] if isinstance(processed, tuple) else processed
    assert tok.decode(tokens).count("<|im_start|>user") == 3

    # eval asks each test conversation's first question, alone (closed book)
    test = rows(out / "test.jsonl")
    with FakeLLMServer() as srv:
        result = run(["eval", str(out / "test.jsonl"), "-p", "openai", "--base-url", srv.url, "-m", "fake-model",
                      "--report", str(tmp_path / "rep"), "--limit", "5"])
        assert result.exit_code == 0, result.output
        asked = [r["body"]["messages"] for r in srv.requests]
    assert sorted(m[-1]["content"] for m in asked) == sorted(r["messages"][0]["content"] for r in test[:5])
    assert all([m["role"] for m in msgs] == ["user"] for msgs in asked)

    # a test conversation whose first question copies a train question is a leak (its later turns differ)
    planted = {"messages": [{"role": "user", "content": train[0]["messages"][0]["content"]},
                            {"role": "assistant", "content": "Something else entirely."},
                            {"role": "user", "content": "And what about the weather on Mars?"},
                            {"role": "assistant", "content": "Cold and dusty."},
                            {"role": "user", "content": "Could you say more about dust storms?"},
                            {"role": "assistant", "content": "They can cover the planet."}]}
    manifest = json.loads((out / "manifest.json").read_text())
    per_file = out / f"{manifest['files'][0]['output']}_test.jsonl"
    with per_file.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(planted) + "\n")
    with (out / "test.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(planted) + "\n")
    result = run(["audit", str(out)])
    assert result.exit_code == 1 and train[0]["messages"][0]["content"] in result.output


def test_finetune_trains_on_every_assistant_turn():
    pytest.importorskip("transformers", reason="needs the [torch] extra")
    from datakeg.dataset.records import Pair
    from datakeg.providers.local import bundled_tokenizer
    from datakeg.support.chat_template import ensure_chat_template
    from datakeg.training.torch_backend import encode

    tok = bundled_tokenizer()
    ensure_chat_template(tok)
    conv = Pair("How do I install Tallyho?", "Run pip install tallyho.",
                followups=(("And how do I undo that?", "Run pip uninstall tallyho."),
                           ("Does that keep my config?", "Yes, the config file stays."))).conversation("Be brief.")
    ids, labels = encode(tok, conv.messages)
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != -100]
    text = tok.decode(trained)
    # the three answers, each with its end-of-turn marker, and nothing of the questions or system
    for answer in ("Run pip install tallyho.", "Run pip uninstall tallyho.", "Yes, the config file stays."):
        assert f"{answer}<|im_end|>" in text
    assert "How do I" not in text and "undo" not in text and "Be brief" not in text
    # the whole sequence is exactly the rendered conversation
    from datakeg.support.chat_template import render

    assert tok.decode(ids) == tok.bos_token + render(tok, conv.messages) + tok.eos_token
    single, single_labels = encode(tok, Pair("Q one?", "A one.").conversation().messages)
    assert tok.decode([i for i, lab in zip(single, single_labels) if lab != -100]).startswith("A one.<|im_end|>")


def test_mlx_trains_on_every_assistant_turn():
    """MLX trains on the torch backend's ids and labels: every answer of a 3-turn row counts in the
    loss, no question or system text does."""
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    pytest.importorskip("transformers", reason="needs the [torch] extra")
    from datakeg.dataset.records import Pair
    from datakeg.providers.local import bundled_tokenizer
    from datakeg.support.chat_template import ensure_chat_template
    from datakeg.training.mlx_backend import batch_arrays, encode_rows

    tok = bundled_tokenizer()
    ensure_chat_template(tok)
    three = Pair("Q1 install?", "A1 pip.", followups=(("Q2 undo?", "A2 uninstall."), ("Q3 config?", "A3 stays."))
                 ).conversation("S")
    one = Pair("Q solo?", "A solo.").conversation()
    batch, mask = batch_arrays(encode_rows(tok, [three, one]), pad_id=tok.pad_token_id or 0)
    for ids, m, answers in zip(batch.tolist(), mask.tolist(), (("A1 pip.", "A2 uninstall.", "A3 stays."), ("A solo.",))):
        trained = tok.decode([i for i, x in zip(ids, m) if x == 1])
        assert all(f"{a}<|im_end|>" in trained for a in answers), trained
        assert "Q1" not in trained and "Q2" not in trained and "undo" not in trained and "S<" not in trained


def test_the_offline_model_refuses_a_task_it_cannot_follow(tmp_path):
    result = run(["generate", str(TESTDOC), str(tmp_path / "out"), "-p", "local", "--task", "conversation", "-q"])
    assert result.exit_code == 2 and "cannot follow task 'conversation'" in result.output
    assert not (tmp_path / "out").exists()


def test_the_mix_is_met_when_the_model_ignores_it_half_the_time(tmp_path):
    """Every other reply is all of one kind: the extra pairs of that kind wait, the chunk asks again
    for the kinds it lacks, and the delivered shares still follow the weights."""
    out = tmp_path / "out"
    weights = load_task("mix").mix
    with FakeLLMServer(faults=["onekind:2"]) as srv:
        result = gen(srv, TESTDOC, out, "--task", "mix", "--pairs-per-1k", "16")
        assert result.exit_code == 0, result.output
        assert any("onekind" in r["faults"] for r in srv.requests)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["dropped"].get("off_mix", 0) > 0
    # the held-back pairs cost requests, not pairs (the fake model runs out of spans on the small
    # Japanese page at this density with or without a mix)
    delivered, target = manifest["totals"]["delivered"], manifest["totals"]["target"]
    assert sum(delivered.values()) >= 0.97 * sum(target.values())
    every = Counter()
    for split in SPLITS:
        every.update(re.match(r"^\[([^\]]+)\] ", r["prompt"]).group(1) for r in rows(out / f"{split}.jsonl"))
    total = sum(every.values())
    assert total >= 300
    for k, w in weights.items():
        if w >= 0.10:
            assert abs(every[k] / total - w) <= 0.05, (k, every[k], total)


def user_turns_by_document(out: Path) -> dict[str, list[str]]:
    """Every user turn of every row, per source document (all splits), read from the per-file outputs."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["output"]: [m["content"] for sp in SPLITS if (out / f"{f['output']}_{sp}.jsonl").exists()
                          for r in rows(out / f"{f['output']}_{sp}.jsonl") for m in r["messages"] if m["role"] == "user"]
            for f in manifest["files"]}


def test_a_later_turn_repeating_another_conversations_question_is_dropped_and_backfilled(tmp_path):
    """Every user turn goes through dedupe: a later turn that repeats a question the document holds
    (another conversation's, any split, any turn) drops its conversation, and backfill replaces it."""
    from rapidfuzz import fuzz

    from datakeg.curation.quality import normalize_question

    out = tmp_path / "out"
    with FakeLLMServer(faults=["repeatturn:3"]) as srv:
        result = gen(srv, TESTDOC, out, "--task", "conversation")
        assert result.exit_code == 0, result.output
        assert sum("repeatturn" in r["faults"] for r in srv.requests) >= 5
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["delivered"] == totals["target"]  # backfilled: nothing short
    dropped = [r for r in rows(out / "rejects.jsonl") if r.get("reason") == "duplicate_followup"]
    assert len(dropped) == totals["dropped"]["duplicate_followup"] >= 5
    kept = user_turns_by_document(out)
    sources = {f["path"]: f["output"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    for r in dropped:
        # the dropped conversation's last turn is the planted repeat: the server's first-question form,
        # not a follow-up of its own, and near a question the document holds or held
        planted = normalize_question(r["followups"][-1]["question"])
        assert r["followups"][-1]["question"].startswith("What is said about ")
        held = kept[sources[r["source"]]] + [x["question"] for x in rows(out / "rejects.jsonl")
                                             if x is not r and x.get("source") == r["source"]]
        assert max(fuzz.token_sort_ratio(planted, normalize_question(q)) for q in held) >= 90
    # independently: no two user turns of a document, in any splits, are near duplicates
    for doc, turns in kept.items():
        norm = [normalize_question(t) for t in turns]
        assert len(norm) >= 6
        close = [(a, b) for j, a in enumerate(norm) for b in norm[j + 1:] if fuzz.token_sort_ratio(a, b) >= 90]
        assert not close, (doc, close[:3])
