"""Data safety through the command line: commands never destroy data, read any text, and say why."""

from pathlib import Path

from click.testing import CliRunner

from datakeg import jsonl
from datakeg.cli import cli
from datakeg.records import Pair, from_row, to_row
from datakeg.writers import SPLITS, atomic_write_jsonl, per_file_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_merge_refuses_a_folder_without_per_file_outputs(tmp_path):
    """Regression: `datakeg merge DIR` on a folder holding only train/valid/test.jsonl wrote all three
    empty and exited 0."""
    for split in SPLITS:
        jsonl.write_rows(tmp_path / f"{split}.jsonl", [to_row(Pair(f"A {split} question?", "An answer."))])
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(cli, ["merge", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "no per-file outputs" in result.output and "Nothing was changed" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def test_merge_keeps_rows_holding_unicode_line_separators(tmp_path):
    pairs = [Pair(f"What does{sep}it do?", f"It{sep}works.") for sep in ("\u2028", "\u2029", "\x85", "\x1c", "\x0c")]
    for split in SPLITS:
        atomic_write_jsonl(per_file_path(tmp_path, "doc", split), [to_row(p) for p in pairs])
    result = CliRunner().invoke(cli, ["merge", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train.jsonl 5 rows" in result.output
    assert [from_row(v) for _, v, _ in jsonl.load_rows(tmp_path / "train.jsonl")] == pairs


def test_audit_remove_refuses_a_folder_without_per_file_outputs(tmp_path):
    q = "How do I install datakeg on Linux?"
    for split in SPLITS:
        jsonl.write_rows(tmp_path / f"{split}.jsonl", [to_row(Pair(q, "pip install datakeg"))])
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(cli, ["audit", str(tmp_path), "--remove"])
    assert result.exit_code == 2, result.output
    assert "no per-file outputs" in result.output
    assert _snapshot(tmp_path) == before
