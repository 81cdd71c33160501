"""datakeg eval against the fake server with known answers, so the scores are known."""

import json

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.errors import ProviderRequestError
from datakeg.evaluation.evaluate import (
    ECHO_MODEL,
    evaluate,
    exact_match,
    load_test_pairs,
    normalize_answer,
    parse_judge_reply,
    strip_think,
    token_f1,
)
from datakeg.providers.base import Completion, Provider
from datakeg.testing.fake_server import FakeLLMServer

ROWS = [
    {"prompt": "What does the --json option do?", "completion": "It prints the counts as JSON."},
    {"prompt": "Which Python version does Tallyho need?", "completion": "Python 3.10 or newer."},
    {"prompt": "Where is the configuration file?", "completion": "In tallyho.toml in the current directory."},
]


def test_metrics():
    assert normalize_answer("The  Answer, is: A.") == "answer is"
    assert exact_match("it prints the counts as json", "It prints the counts as JSON.") == 1.0
    assert token_f1("python 3.10", "Python 3.10 or newer.") == 2 * (1.0 * 0.5) / 1.5
    assert token_f1("nothing here", "Python 3.10") == 0.0


def test_eval_scores_and_compare_with_judge(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    answers = {
        "fake-model\x00" + ROWS[0]["prompt"]: "It prints the counts as JSON.",  # exact
        "fake-model\x00" + ROWS[1]["prompt"]: "Python 3.10.",  # partial
        "qwen2.5:3b\x00" + ROWS[0]["prompt"]: "It prints a table.",  # the other model: weaker
    }
    with FakeLLMServer(answers=answers) as srv:
        result = CliRunner().invoke(cli, [
            "eval", str(test), "-p", "openai", "--base-url", srv.url, "-m", "fake-model", "--compare", "qwen2.5:3b",
            "--judge-model", "fake-model", "--report", str(tmp_path / "rep")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "rep.json").read_text())
    tuned, base, echo = data["reports"]
    assert [r["summary"]["role"] for r in data["reports"]] == ["model", "compare", "baseline"]
    s = tuned["summary"]
    assert s["questions"] == 3 and s["answered"] == 3 and s["failed"] == 0 and s["judge_failed"] == 0
    assert s["exact_match"] == round(1 / 3, 4)
    f1_partial = token_f1("Python 3.10.", "Python 3.10 or newer.")
    assert s["token_f1"] == round((1 + f1_partial + 0) / 3, 4)
    assert [i["judge"] for i in tuned["items"]] == [1.0, 0.4, 0.0]  # fake judge: 5, 2, 0 out of 5
    assert tuned["items"][2]["answer"] == "I do not know."
    assert base["summary"]["exact_match"] == 0.0
    md = (tmp_path / "rep.md").read_text()
    assert "difference (fake-model - qwen2.5:3b)" in md and "| 1 | What does the --json option do?" in md
    assert f"difference (fake-model - {ECHO_MODEL})" in md
    # the echo baseline answers with the question, in every format
    assert echo["summary"]["model"] == ECHO_MODEL and echo["items"][0]["answer"] == ROWS[0]["prompt"]
    assert echo["summary"]["token_f1"] == round(sum(token_f1(r["prompt"], r["completion"]) for r in ROWS) / 3, 4)
    assert "difference" in result.output and "echo baseline" in result.output and "answered" in result.output


def test_every_model_gets_the_same_prompt_and_the_echo_baseline_is_always_there(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with FakeLLMServer() as srv:
        result = CliRunner().invoke(cli, [
            "eval", str(test), "-p", "openai", "--base-url", srv.url, "-m", "fake-model", "--compare", "qwen2.5:3b",
            "--system-message", "You are the Tallyho expert.", "--report", str(tmp_path / "rep")],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        asked = {}
        for r in srv.requests:
            asked.setdefault(r["body"]["model"], []).append(r["body"]["messages"])
    assert set(asked) == {"fake-model", "qwen2.5:3b"}
    key = lambda msgs: msgs[-1]["content"]
    assert sorted(asked["fake-model"], key=key) == sorted(asked["qwen2.5:3b"], key=key)
    assert asked["fake-model"][0][0] == {"role": "system", "content": "You are the Tallyho expert."}
    assert len(asked["fake-model"][0]) == 2  # system + question: no example slipped in for one model only
    # without --compare the report still holds the echo baseline
    with FakeLLMServer() as srv:
        result = CliRunner().invoke(cli, ["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m",
                                          "fake-model", "--report", str(tmp_path / "solo")], catch_exceptions=False)
    reports = json.loads((tmp_path / "solo.json").read_text())["reports"]
    assert [r["summary"]["model"] for r in reports] == ["fake-model", ECHO_MODEL]
    assert ECHO_MODEL in (tmp_path / "solo.md").read_text()


def test_think_blocks_are_stripped_before_scoring(tmp_path):
    assert strip_think("<think>The doc says JSON.</think>\nIt prints the counts as JSON.") == \
        "It prints the counts as JSON."
    assert strip_think("<think>never closed because the tokens ran out") == ""
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(ROWS[0]) + "\n")
    answers = {ROWS[0]["prompt"]: "<think>The --json flag changes the output.</think>It prints the counts as JSON."}
    with FakeLLMServer(answers=answers) as srv:
        result = CliRunner().invoke(cli, ["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m", "fake-model",
                                          "--judge-model", "fake-model", "--report", str(tmp_path / "rep")],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    item = json.loads((tmp_path / "rep.json").read_text())["reports"][0]["items"][0]
    assert item["answer"] == "It prints the counts as JSON." and item["exact"] == 1.0 and item["judge"] == 1.0
    assert item["raw_answer"].startswith("<think>")


@pytest.mark.parametrize("reply,score", [
    ("4/5", 4), ("Score: 4", 4), ('{"score": "4"}', 4), ('{"score": "4/5", "reason": "r"}', 4),
    ('Here you go:\n```json\n{"score": 3, "reason": "close"}\n```\nDone.', 3), ("8/10", 4), ("5", 5),
    ('<think>maybe 1/5</think>{"score": 2}', 2),
])
def test_judge_replies_are_parsed_tolerantly(reply, score):
    assert parse_judge_reply(reply)[0] == score


@pytest.mark.parametrize("reply", ["I cannot grade this.", "Score: 9", '{"score": "high"}', ""])
def test_judge_replies_without_a_usable_score_are_failures(reply):
    assert parse_judge_reply(reply) is None


def test_judge_formats_and_judge_failures_through_the_server(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    answers = {ROWS[0]["prompt"]: ROWS[0]["completion"], ROWS[1]["prompt"]: "Python 3.10."}
    for judge in ("judge-fraction", "judge-scoreword", "judge-string", "judge-prose", "judge-think"):
        with FakeLLMServer(answers=answers) as srv:
            result = CliRunner().invoke(cli, ["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m",
                                              "fake-model", "--judge-model", judge, "--report", str(tmp_path / judge)],
                                        catch_exceptions=False)
        assert result.exit_code == 0, result.output
        rep = json.loads((tmp_path / f"{judge}.json").read_text())["reports"][0]
        assert [i["judge"] for i in rep["items"]] == [1.0, 0.4, 0.0], judge
        assert rep["summary"]["judge_failed"] == 0
    with FakeLLMServer(answers=answers) as srv:
        result = CliRunner().invoke(cli, ["eval", str(test), "-p", "openai", "--base-url", srv.url, "-m",
                                          "fake-model", "--judge-model", "judge-broken", "--report",
                                          str(tmp_path / "broken")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "broken.json").read_text())["reports"][0]
    s = rep["summary"]
    assert s["judge_failed"] == 3 and s["judge"] is None  # not three zeros
    assert s["exact_match"] == round(1 / 3, 4)  # the other metrics are unaffected
    assert all(i["judge"] is None and "unable to grade" in i["judge_error"] for i in rep["items"])
    assert "failed" in (tmp_path / "broken.md").read_text()


class _FlakyProvider(Provider):
    name = "flaky"

    def complete(self, request):
        q = request.messages[-1]["content"]
        if q == ROWS[2]["prompt"]:
            raise ProviderRequestError("HTTP 500 from the server")
        return Completion({ROWS[0]["prompt"]: ROWS[0]["completion"]}.get(q, "no idea"), 1, 1)

    def describe(self):
        return {"provider": self.name, "model": "flaky-model"}


def test_failed_questions_are_reported_apart_not_scored_zero(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    report = evaluate(load_test_pairs(test), _FlakyProvider("flaky-model"))
    s = report.summary()
    assert (s["questions"], s["answered"], s["failed"]) == (3, 2, 1)
    assert s["exact_match"] == 0.5  # 1 of the 2 answered, not 1 of 3
    failed = report.items[2]
    assert failed.error and failed.exact is None and failed.f1 is None
