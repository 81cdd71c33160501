"""Data safety through the command line: commands never destroy data, read any text, and say why."""

from pathlib import Path

from click.testing import CliRunner

from datakeg.dataset import jsonl
from datakeg.cli import cli
from datakeg.dataset.records import Pair, from_row, to_row
from datakeg.dataset.splits import SPLITS
from datakeg.dataset.writers import atomic_write_jsonl, per_file_path


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
    assert not (tmp_path / ".datakeg").exists()  # refused before any lock was taken


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


def test_generate_reads_odd_names_and_encodings(server, tmp_path):
    """A non-UTF-8 file name, a UTF-16 file and a short Latin-1 file all become documents; the
    manifest (JSON) holds their names."""
    import json
    import os

    src = tmp_path / "src"
    src.mkdir()
    body = "# Café\n\nLe café est prêt. Déjà vu à Noël. La fenêtre est ouverte, où est le garçon ?\n"
    (src / "utf16.md").write_bytes(b"\xff\xfe" + body.encode("utf-16-le"))
    (src / "latin1.md").write_bytes(body.encode("latin-1"))
    odd = b"caf\xe9.md"
    try:
        with open(os.path.join(os.fsencode(src), odd), "wb") as fh:
            fh.write(body.encode("utf-8"))
    except OSError:
        odd = None
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", server.url, "-q",
                                      "--language", "French"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    files = {f["path"]: f for f in manifest["files"]}
    assert manifest["skipped"] == []
    assert files["utf16.md"]["encoding"] == "utf-16-le"
    assert files["latin1.md"]["encoding"] == "cp1252"
    if odd:
        assert "caf%E9.md" in files
    rows = [v for _, v, _ in jsonl.load_rows(out / "train.jsonl")]
    assert any("prêt" in json.dumps(r, ensure_ascii=False) for r in rows)
    assert not any("prźt" in json.dumps(r, ensure_ascii=False) for r in rows)
