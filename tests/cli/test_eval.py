"""datakeg eval against the fake server with known answers, so the scores are known."""

import json

from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.evaluate import exact_match, normalize_answer, token_f1
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
    tuned, base = data["reports"]
    s = tuned["summary"]
    assert s["questions"] == 3 and s["errors"] == 0
    assert s["exact_match"] == round(1 / 3, 4)
    f1_partial = token_f1("Python 3.10.", "Python 3.10 or newer.")
    assert s["token_f1"] == round((1 + f1_partial + 0) / 3, 4)
    assert [i["judge"] for i in tuned["items"]] == [1.0, 0.4, 0.0]  # fake judge: 5, 2, 0 out of 5
    assert tuned["items"][2]["answer"] == "I do not know."
    assert base["summary"]["exact_match"] == 0.0
    md = (tmp_path / "rep.md").read_text()
    assert "difference (fake-model - qwen2.5:3b)" in md and "| 1 | What does the --json option do?" in md
    assert "difference" in result.output
