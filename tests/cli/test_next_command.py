"""Every output flows into the next command: an empty split passes validate and convert, audit
reads any folder of dataset files, convert never overwrites a folder it did not write and writes
its folder atomically, files honour the umask."""

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli

PAIR = {"prompt": "How do I install Tallyho?", "completion": "Run pip install tallyho."}


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def quickstart_like(tmp_path: Path) -> Path:
    """What the quick start delivers: train has pairs, valid and test are empty files."""
    out = tmp_path / "out"
    write_jsonl(out / "train.jsonl", [PAIR, {"prompt": "What does tallyho count print?", "completion": "Counts."}])
    (out / "valid.jsonl").write_text("", encoding="utf-8")
    (out / "test.jsonl").write_text("", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- validate
def test_validate_reports_an_empty_split_and_accepts_it(tmp_path):
    out = quickstart_like(tmp_path)
    result = run("validate", out)
    assert result.exit_code == 0, result.output
    assert f"{out / 'valid.jsonl'}: empty (0 rows): ok" in result.output
    assert "holds no rows" not in result.output


def test_validate_require_all_splits_fails_on_an_empty_or_missing_split(tmp_path):
    out = quickstart_like(tmp_path)
    result = run("validate", out, "--require-all-splits")
    assert result.exit_code == 1
    assert "line 0: the file holds no rows" in result.output
    (out / "valid.jsonl").unlink()
    write_jsonl(out / "test.jsonl", [{"prompt": "Which Python?", "completion": "3.10+"}])
    result = run("validate", out, "--require-all-splits")
    assert result.exit_code == 1 and "valid.jsonl: missing" in result.output
    write_jsonl(out / "valid.jsonl", [{"prompt": "Which licence?", "completion": "MIT"}])
    assert run("validate", out, "--require-all-splits").exit_code == 0


def test_validate_finds_the_same_text_row_in_every_split_and_says_how_text_rows_are_checked(tmp_path):
    out = tmp_path / "chatml"
    row = {"text": "<|im_start|>user\nHow do I install Tallyho?<|im_end|>\n<|im_start|>assistant\npip<|im_end|>\n"}
    other = {"text": "<|im_start|>user\nWhich Python?<|im_end|>\n<|im_start|>assistant\n3.10<|im_end|>\n"}
    for split in ("train", "valid", "test"):
        write_jsonl(out / f"{split}.jsonl", [row])
    result = run("validate", out)
    assert result.exit_code == 1, result.output
    assert "cross-split duplicates (>= 90 similar to a train question): 2" in result.output
    assert "only identical rows count" in result.output
    write_jsonl(out / "valid.jsonl", [other])
    write_jsonl(out / "test.jsonl", [])
    result = run("validate", out)
    assert result.exit_code == 0, result.output
    assert "duplicates (>= 90 similar to a train question): 0" in result.output
    assert "only identical rows count" in result.output


# --------------------------------------------------------------------------- convert
def test_convert_writes_an_empty_file_for_an_empty_split(tmp_path):
    out = quickstart_like(tmp_path)
    dst = tmp_path / "chatml"
    result = run("convert", out, dst, "-t", "chatml")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"].count("<|im_start|>") for line in
            (dst / "train.jsonl").read_text().splitlines()] == [2, 2]
    assert (dst / "valid.jsonl").read_text() == "" and (dst / "test.jsonl").read_text() == ""
    assert "0 rows" in result.output
    # and the converted folder validates
    assert run("validate", dst).exit_code == 0


def test_convert_refuses_a_folder_it_did_not_write_unless_forced(tmp_path):
    out = quickstart_like(tmp_path)
    dst = tmp_path / "mine"
    write_jsonl(dst / "train.jsonl", [{"mine": "precious"}])
    (dst / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["convert", str(out), str(dst), "-t", "chatml"])
    assert result.exit_code == 2 and "not written by datakeg" in result.output and "--force" in result.output
    assert json.loads((dst / "train.jsonl").read_text()) == {"mine": "precious"}
    # a generate output folder is not convert's either
    result = CliRunner().invoke(cli, ["convert", str(out), str(out), "-t", "chatml"])
    assert result.exit_code == 2 and json.loads((out / "train.jsonl").read_text().splitlines()[0]) == PAIR
    forced = run("convert", out, dst, "-t", "chatml", "--force")
    assert forced.exit_code == 0, forced.output
    assert "<|im_start|>" in (dst / "train.jsonl").read_text()
    assert (dst / "notes.txt").read_text() == "keep me"  # nothing else touched
    # its own earlier output is rewritten without --force
    again = run("convert", out, tmp_path / "fresh", "-t", "messages")
    assert again.exit_code == 0
    assert run("convert", out, tmp_path / "fresh", "-t", "chatml").exit_code == 0
    assert "<|im_start|>" in (tmp_path / "fresh" / "train.jsonl").read_text()


def test_a_failed_folder_conversion_leaves_no_folder_behind(tmp_path):
    out = quickstart_like(tmp_path)
    write_jsonl(out / "test.jsonl", [{"text": "plain rows cannot be converted"}])
    dst = tmp_path / "conv"
    result = CliRunner().invoke(cli, ["convert", str(out), str(dst), "-t", "chatml"])
    assert result.exit_code != 0 and "plain" in result.output
    assert not dst.exists()  # not a half-written DST holding only train.jsonl
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # an earlier good output stays as it was
    write_jsonl(out / "test.jsonl", [])
    assert run("convert", out, dst, "-t", "messages").exit_code == 0
    before = (dst / "train.jsonl").read_bytes()
    write_jsonl(out / "test.jsonl", [{"text": "plain rows cannot be converted"}])
    assert CliRunner().invoke(cli, ["convert", str(out), str(dst), "-t", "chatml"]).exit_code != 0
    assert (dst / "train.jsonl").read_bytes() == before


# --------------------------------------------------------------------------- file modes
@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_written_files_and_folders_honour_the_umask(tmp_path):
    out = quickstart_like(tmp_path)
    old = os.umask(0o022)
    try:
        from datakeg.dataset import atomic

        atomic._umask = None  # read again under this test's umask
        result = run("convert", out, tmp_path / "conv", "-t", "chatml")
        assert result.exit_code == 0
        assert stat.S_IMODE((tmp_path / "conv" / "train.jsonl").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "conv").stat().st_mode) == 0o755
        run("convert", out / "train.jsonl", tmp_path / "one.jsonl", "-t", "messages")
        assert stat.S_IMODE((tmp_path / "one.jsonl").stat().st_mode) == 0o644
        # a replaced file keeps its mode, as open() would
        (tmp_path / "one.jsonl").chmod(0o640)
        run("convert", out / "train.jsonl", tmp_path / "one.jsonl", "-t", "alpaca")
        assert stat.S_IMODE((tmp_path / "one.jsonl").stat().st_mode) == 0o640
    finally:
        os.umask(old)
        atomic._umask = None


# --------------------------------------------------------------------------- audit
def test_audit_reads_any_folder_of_dataset_files_and_names_what_it_cannot_audit(tmp_path):
    out = quickstart_like(tmp_path)
    write_jsonl(out / "valid.jsonl", [{"messages": [{"role": "user", "content": "How do I install Tallyho ?"},
                                                    {"role": "assistant", "content": "With pip."}]}])
    result = run("audit", out)
    assert result.exit_code == 1, result.output  # a chat row leaking a completion row, empty test split
    assert "valid.jsonl line 1 [valid~train" in result.output
    (out / "train.jsonl").unlink()  # no train.jsonl: still a folder of dataset files
    assert run("audit", out).exit_code == 0
    conv = tmp_path / "chatml"
    assert run("convert", quickstart_like(tmp_path / "b"), conv, "-t", "chatml").exit_code == 0
    for args in (["audit", str(conv)], ["audit", str(conv), "--remove"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
        assert 'cannot audit plain {"text"} rows: train.jsonl (2 rows)' in result.output
        assert "Audit the folder it was converted from" in result.output
        assert "Run without --remove" not in result.output


# --------------------------------------------------------------------------- the README's chain
DOC = """# Tallyho

Tallyho counts words, lines and headings in Markdown files.
Run `tallyho count FILE` to print the counts. Install it with `pip install tallyho`.
"""


def test_the_readme_chain_generate_validate_convert_on_an_empty_split(tmp_path):
    """The quick start's shape of result (train has pairs, valid and test none) goes through the
    README's next commands; the manifest records exactly the warnings that were printed."""
    from datakeg.testing.fake_server import FakeLLMServer

    src = tmp_path / "docs"
    src.mkdir()
    (src / "tallyho.md").write_text(DOC, encoding="utf-8")
    (src / "empty.md").write_text("", encoding="utf-8")  # skipped, with a warning
    (src / "notes.txt").write_bytes("Tallyho ne compte pas les caract\xe8res accentu\xe9s.\n".encode("latin-1"))
    out = tmp_path / "out-quickstart"
    with FakeLLMServer() as srv:  # a document this small gets no test pair
        result = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url,
                                          "--pairs-per-1k", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    delivered = manifest["totals"]["delivered"]
    assert delivered["train"] > 0 and delivered["test"] == 0 and (out / "test.jsonl").read_text() == ""
    printed = [line[len("warning: "):] for line in result.output.splitlines() if line.startswith("warning: ")]
    assert printed and manifest["warnings"] == printed
    validated = run("validate", out)
    assert validated.exit_code == 0, validated.output
    assert "test.jsonl: empty (0 rows): ok" in validated.output
    converted = run("convert", out, tmp_path / "out-qs-chatml", "--template", "chatml")
    assert converted.exit_code == 0, converted.output
    rows = (tmp_path / "out-qs-chatml" / "train.jsonl").read_text().splitlines()
    assert len(rows) == delivered["train"] and all("<|im_start|>assistant\n" in json.loads(r)["text"] for r in rows)
    assert (tmp_path / "out-qs-chatml" / "test.jsonl").read_text() == ""
    assert run("validate", tmp_path / "out-qs-chatml").exit_code == 0


def test_converting_again_into_its_own_folder_leaves_no_stale_output(tmp_path):
    out = quickstart_like(tmp_path)
    dst = tmp_path / "conv"
    assert run("convert", out, dst, "-t", "chatml").exit_code == 0
    (out / "test.jsonl").unlink()  # the next SRC has no test split
    (dst / "notes.txt").write_text("mine")
    assert run("convert", out, dst, "-t", "messages").exit_code == 0
    assert sorted(p.name for p in dst.iterdir()) == [".datakeg", "notes.txt", "train.jsonl", "valid.jsonl"]
    assert "messages" in (dst / "train.jsonl").read_text()
