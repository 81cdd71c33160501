"""convert/validate: every rendered template is compared with the model's *official* chat template
(tests/fixtures/official_chat_templates.json, sources noted there) rendered by jinja2 the way
transformers' apply_chat_template renders it."""

import json
from pathlib import Path

import jinja2
import pytest
from click.testing import CliRunner
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from datakeg.cli import cli
from datakeg.dataset.conversion import TARGETS
from datakeg.dataset.records import Conversation, Pair

FIXTURES = json.loads((Path(__file__).parents[1] / "fixtures" / "official_chat_templates.json").read_text("utf-8"))


def hf_render(name: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render like transformers' apply_chat_template (sandboxed, trim_blocks, lstrip_blocks)."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    fx = FIXTURES[name]
    return env.from_string(fx["template"]).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  bos_token=fx["bos_token"], eos_token=fx["eos_token"])


# transformers-rendered outputs recorded alongside these templates (mistral.rs test_chat_templates),
# to show that hf_render above renders exactly as transformers does
RECORDED = [
    ("chatml", True, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
     "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"
     "   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n"),
    ("mistral", False, "<s>[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>"
     "[INST] Another question [/INST]"),
    ("gemma", False, "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
     "<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n"
     "<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n"),
]


@pytest.mark.parametrize("name,has_system,expected", RECORDED)
def test_hf_render_matches_recorded_transformers_output(name, has_system, expected):
    msgs = [("system", "You are a helpful assistant"), ("user", "Hello"), ("assistant", "Hi there"),
            ("user", "Who are you"), ("assistant", "   I am an assistant   "), ("user", "Another question")]
    messages = [{"role": r, "content": c} for r, c in (msgs if has_system else msgs[1:])]
    assert hf_render(name, messages, add_generation_prompt=True) == expected


CONVERSATIONS = [
    Pair("What does `tallyho count` print?", "The number of words, lines and headings.").conversation(),
    Pair("How do I install it?", "Run:\n\n```shell\npip install tallyho\n```\n").conversation("You are the Tallyho docs expert."),
    Pair('Quotes "double" and \'single\', a </s> and <|im_end|> inside?', "  Ünïcödé ✓ — 日本語  ").conversation(),
    Conversation([{"role": "user", "content": "First?"}, {"role": "assistant", "content": "One."},
                  {"role": "user", "content": "Second?"}, {"role": "assistant", "content": "Two."}]),
    # a row of `generate --task conversation` with a system message: three turns
    Pair("How do I install Tallyho?", "Run `pip install tallyho`.",
         followups=(("And how do I undo that?", "Run `pip uninstall tallyho`.\n"),
                    ("Does that remove my config?", "  No: ~/.tallyho.toml stays.  "))).conversation("You are the docs expert."),
]


@pytest.mark.parametrize("name", list(FIXTURES))
@pytest.mark.parametrize("conv", CONVERSATIONS, ids=["plain", "system+code", "special", "multi-turn", "3-turn+system"])
def test_rendered_templates_are_byte_identical_to_official(name, conv):
    ours = TARGETS[name].render(conv)["text"]
    official_messages = [dict(m) for m in conv.messages]
    if TARGETS[name].system == "merged" and conv.system:  # the official template has no system turn
        official_messages = [dict(m) for m in official_messages[1:]]
        official_messages[0]["content"] = f"{conv.system}\n\n{official_messages[0]['content']}"
    assert ours == hf_render(name, official_messages)


def test_merged_system_targets_refuse_system_officially():
    with pytest.raises(jinja2.exceptions.TemplateError):
        hf_render("gemma", [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                            {"role": "assistant", "content": "a"}])


def test_deepseek_r1_keeps_reasoning_in_think():
    conv = Pair("Why?", "Because.", "Step one.\nStep two.").conversation()
    ours = TARGETS["deepseek-r1"].render(conv)["text"]
    think = "<think>\nStep one.\nStep two.\n</think>\n\n"
    assert think in ours
    # the official template drops reasoning from assistant turns; without it the texts are identical
    assert ours.replace(think, "") == hf_render("deepseek-r1", Pair("Why?", "Because.").conversation().messages)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def read(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every row ends with a newline
    return [json.loads(line) for line in lines[:-1]]


def test_round_trip_completion_messages_alpaca_completion(tmp_path):
    rows = [{"prompt": "Q1 with \"quotes\"\nand a newline?", "completion": "A1 </s> ünï ✓"},
            {"prompt": "  padded  ", "completion": "\tTabbed\n"}]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    assert run(["convert", str(src), str(tmp_path / "m.jsonl"), "-t", "messages"]).exit_code == 0
    assert run(["convert", str(tmp_path / "m.jsonl"), str(tmp_path / "a.jsonl"), "-t", "alpaca"]).exit_code == 0
    assert run(["convert", str(tmp_path / "a.jsonl"), str(tmp_path / "c2.jsonl"), "-t", "completion"]).exit_code == 0
    assert read(tmp_path / "c2.jsonl") == rows
    assert read(tmp_path / "a.jsonl")[0] == {"instruction": rows[0]["prompt"], "input": "", "output": rows[0]["completion"]}


def test_every_target_writes_single_line_jsonl(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", [{"question": 'Line\nbreak "q" </s>?', "reasoning": "r\nr", "answer": "a\n\nb"}])
    for name in TARGETS:
        dst = tmp_path / f"{name}.jsonl"
        result = run(["convert", str(src), str(dst), "-t", name])
        assert result.exit_code == 0, result.output
        assert len(read(dst)) == 1


def test_detection_looks_past_the_first_line_and_reports(tmp_path):
    rows = [{"text": "a stray plain row"}] + [{"conversations": [{"from": "human", "value": f"Q{i}?"},
                                                                 {"from": "gpt", "value": f"A{i}"}]} for i in range(5)]
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    result = run(["convert", str(src), str(tmp_path / "o.jsonl"), "-t", "completion"])
    assert result.exit_code == 0
    assert "input rows: sharegpt (detected from the first" in result.output and "line 1: skipped" in result.output
    assert read(tmp_path / "o.jsonl") == [{"prompt": f"Q{i}?", "completion": f"A{i}"} for i in range(5)]


def test_json_array_input_and_loss_note_once(tmp_path):
    src = tmp_path / "data.json"
    src.write_text(json.dumps([{"instruction": f"Q{i}", "input": "", "output": f"A{i}", "system": "S"} for i in range(3)]))
    result = run(["convert", str(src), str(tmp_path / "o.jsonl"), "-t", "completion"])
    assert result.exit_code == 0
    assert result.output.count("note: the system message is dropped") == 1
    reasoning = write_jsonl(tmp_path / "r.jsonl", [{"question": "Q?", "reasoning": "R", "answer": "A"}] * 3)
    result = run(["convert", str(reasoning), str(tmp_path / "o2.jsonl"), "-t", "chatml"])
    assert result.output.count("reasoning is dropped") == 1


def test_directory_mode_and_system_message(tmp_path):
    src = tmp_path / "out"
    src.mkdir()
    for split in ("train", "valid", "test"):
        write_jsonl(src / f"{split}.jsonl", [{"prompt": f"{split} Q?", "completion": "A"}])
    result = run(["convert", str(src), str(tmp_path / "conv"), "-t", "zephyr", "--system-message", "Be brief."])
    assert result.exit_code == 0
    for split in ("train", "valid", "test"):
        assert read(tmp_path / "conv" / f"{split}.jsonl") == [
            {"text": f"<|system|>\nBe brief.</s>\n<|user|>\n{split} Q?</s>\n<|assistant|>\nA</s>\n"}]


def test_custom_template(tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% if system %}{{ system }}\n{% endif %}Q: {{ question }}\nA: {{ answer }}")
    src = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Why?", "completion": "Because."}])
    result = run(["convert", str(src), str(tmp_path / "o.jsonl"), "--custom-template", str(tpl), "--system-message", "S"])
    assert result.exit_code == 0
    assert read(tmp_path / "o.jsonl") == [{"text": "S\nQ: Why?\nA: Because."}]


def test_unknown_template_is_a_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Q", "completion": "A"}])
    result = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "o.jsonl"), "-t", "llama9"])
    assert result.exit_code == 2 and "chatml" in result.output


def test_validate_reports_each_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "user", "content": "again"}]}),
        json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]}),
        json.dumps({"prompt": "Q", "completion": "A"}),
        json.dumps({"foo": 1}),
    ]) + "\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    out = result.output
    assert "6 rows, shape chat: 5 problem(s)" in out
    assert "line 2: invalid JSON" in out
    assert "line 3: roles must alternate" in out
    assert "line 4: messages[0] (user) has an empty" in out
    assert "line 5: shape completion differs" in out
    assert "line 6: unknown row shape" in out


def test_validate_output_dir_reports_cross_split_duplicates(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_jsonl(out / "train.jsonl", [{"prompt": "How do I install Tallyho?", "completion": "pip install tallyho"}])
    write_jsonl(out / "valid.jsonl", [{"prompt": "Which Python does Tallyho need?", "completion": "3.10+"}])
    write_jsonl(out / "test.jsonl", [{"prompt": "How do I install Tallyho ?", "completion": "With pip."}])
    result = CliRunner().invoke(cli, ["validate", str(out)])
    assert result.exit_code == 1
    assert "cross-split duplicates (>= 90 similar to a train question): 1" in result.output
    assert "test.jsonl line 1" in result.output
    write_jsonl(out / "test.jsonl", [{"prompt": "What does the --json option do?", "completion": "Prints JSON."}])
    assert CliRunner().invoke(cli, ["validate", str(out)]).exit_code == 0
