"""`datakeg review` driven in a real browser: headless Chromium (Debian's package) through
Playwright, against the real server started by the real CLI on an OUT that `datakeg generate`
wrote with the fake LLM server (with junk pairs, so that there are dropped pairs to restore).

The independent truths are the files on disk: after the browser's decisions, `datakeg merge` and
`datakeg convert` must hold the edited question, lack the rejected pair and hold the restored
one; a refused edit must leave no trace in the journal.

Skips (with the reason) only when playwright, starlette/uvicorn or /usr/bin/chromium is missing;
.ci/run installs all three.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.testing.fake_server import FakeLLMServer
from conftest import ROOT

pytest.importorskip("starlette", reason="the [review] extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the [review] extra (uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("DATAKEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium (apt-get install chromium)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SPLITS = ("train", "valid", "test")
DOCS = ("README.md", "guide/README.md", "guide/ci.rst.txt", "guide/faq.txt", "CHANGELOG.md")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("review")
    src = base / "docs"
    for rel in DOCS:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "testdoc" / rel, src / rel)
    out = base / "out"
    with FakeLLMServer(faults=["junk"]) as srv:
        r = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q"],
                               catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert any(x["kind"] == "dropped_pair" for x in rows(out / "rejects.jsonl"))
    return out


class Review:
    """`datakeg review OUT --port 0` in a subprocess; its URL read from what it prints."""

    def __init__(self, out: Path, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "datakeg", "review", str(out), "--port", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("Open "):
                self.url = line.split()[1]
                break
        else:
            raise AssertionError("no URL printed: " + "".join(self.lines) + self.proc.stderr.read())
        self.base = self.url.split("/?")[0]
        self.token = self.url.split("token=")[1]

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        stdout, stderr = self.proc.communicate(timeout=30)
        return self.proc.returncode, "".join(self.lines) + stdout, stderr


def status(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def ready(page) -> None:
    page.wait_for_selector("body[data-ready='1']", timeout=15000)


def shown(page) -> int:
    return int(page.text_content("#counts").split(" of ")[0])


def position(page) -> str:
    return page.text_content("#position").strip()


def wait(page, js: str, arg=None) -> None:
    """Wait for ``js`` to hold in the page; on a timeout, say what the page shows."""
    try:
        page.wait_for_function(js, arg=arg, timeout=20000)
    except sync_api.TimeoutError:
        raise AssertionError(f"timed out waiting for {js} ({arg!r}): position {position(page)!r}, counts "
                             f"{page.text_content('#counts')!r}, message {page.text_content('#message')!r}") from None


def wait_position(page, text: str) -> None:
    wait(page, "t => document.getElementById('position').textContent.trim() === t", text)


def test_review_in_the_browser_then_merge_and_convert(out, browser, tmp_path):
    test_rows = len(rows(out / "test.jsonl"))
    # a dropped pair is listed once per document and question (the same junk may be dropped twice)
    test_dropped = sorted({(x["source"], x["question"]) for x in rows(out / "rejects.jsonl")
                           if x["kind"] == "dropped_pair" and x["split"] == "test"})
    train_questions = {r["prompt"] for r in rows(out / "train.jsonl")}
    srv = Review(out)
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)
        ready(page)

        # filter: the test split, delivered pairs only; the counts match the files
        page.select_option("#f-split", "test")
        page.wait_for_function("() => document.getElementById('counts').textContent.includes(' of ')")
        wait(page, "n => document.getElementById('position').textContent.trim().endsWith(' / ' + n)",
             test_rows + len(test_dropped))
        assert shown(page) == test_rows + len(test_dropped)
        page.select_option("#f-kind", "row")
        wait_position(page, f"1 / {test_rows}")
        assert shown(page) == test_rows

        # edit a question with the keyboard only: j (next), e (edit), select all, type, Ctrl+Enter
        page.locator("body").focus()
        page.keyboard.press("j")
        wait_position(page, f"2 / {test_rows}")
        page.keyboard.press("e")
        assert page.evaluate("document.activeElement.id") == "question"
        page.keyboard.press("Control+a")
        new_question = "Which command makes Tallyho fail a continuous integration run on too long pages?"
        page.keyboard.type(new_question)
        page.keyboard.press("Control+Enter")
        wait(page, "() => document.getElementById('message').textContent !== ''")
        assert page.text_content("#message").startswith("Saved"), page.text_content("#message")
        assert page.input_value("#question") == new_question
        assert "edited" in page.text_content("#badge")
        edited_original = page.text_content("#original")
        assert "As generated" in edited_original

        # an edit that copies a train question (another document's) into test is refused, with the reason
        page.keyboard.press("j")
        wait_position(page, f"3 / {test_rows}")
        before_q = page.input_value("#question")
        this_file = page.text_content("#meta").split(" \u00b7 ")[1]
        copied = next(r["question"] for r in rows(out / "provenance.jsonl")
                      if r["split"] == "train" and r["file"] != this_file)
        journal_lines = len((out / ".datakeg" / "review.jsonl").read_text().splitlines())
        page.keyboard.press("e")
        page.keyboard.press("Control+a")
        page.keyboard.type(copied)
        page.keyboard.press("Control+Enter")
        wait(page, "() => document.getElementById('message').textContent !== ''")
        assert "leakage audit" in page.text_content("#message"), page.text_content("#message")
        assert "train" in page.text_content("#message")
        assert len((out / ".datakeg" / "review.jsonl").read_text().splitlines()) == journal_lines  # nothing saved
        page.keyboard.press("Escape")
        assert page.input_value("#question") == before_q

        # reject this one (x): the page moves on to the next pair
        page.keyboard.press("x")
        wait_position(page, f"4 / {test_rows}")
        rejected_question = before_q

        # restore a dropped pair from the rejects (kind "dropped", key r)
        page.select_option("#f-kind", "reject")
        wait_position(page, f"1 / {len(test_dropped)}")
        restored_question = page.input_value("#question")
        assert page.text_content("#meta").count("dropped (") == 1
        page.keyboard.press("r")
        wait(page, "() => document.querySelector('#list tbody tr').textContent.includes('restored')")

        # position and filters survive a reload
        page.select_option("#f-kind", "row")
        wait_position(page, f"1 / {test_rows}")
        page.keyboard.press("j")
        page.keyboard.press("j")
        wait_position(page, f"3 / {test_rows}")
        at = page.input_value("#question")
        page.reload()
        ready(page)
        assert position(page) == f"3 / {test_rows}"
        assert page.input_value("#question") == at
        assert page.input_value("#f-split") == "test" and page.input_value("#f-kind") == "row"

        # two tabs on one pair: the second save is refused instead of overwriting
        page.keyboard.press("j")
        wait_position(page, f"4 / {test_rows}")
        other = browser.new_page()
        other.goto(page.url)
        ready(other)
        page.keyboard.press("a")  # keep, in the first tab
        wait_position(page, f"5 / {test_rows}")
        other.locator("body").focus()
        other.keyboard.press("x")
        wait(other, "() => document.getElementById('message').textContent.includes('another tab')")
        other.close()
        assert not errors, errors

        # the page without the token, the API without it, a POST without the header: 403
        assert status(srv.base + "/") == 403
        assert status(srv.base + "/api/pairs") == 403
        assert status(srv.base + "/api/pairs?token=wrong" + srv.token[:-5]) == 403
        assert status(srv.base + "/static/app.js") == 403
        assert status(srv.base + f"/api/decide?token={srv.token}", b"{}", {"Content-Type": "application/json"}) == 403
        assert status(srv.base + f"/api/pairs?token={srv.token}") == 200
        assert status(srv.base + f"/static/..%2F..%2Fcli.py?token={srv.token}") == 404
    finally:
        rc, stdout, stderr = srv.stop()
        print(stdout, stderr)
    assert rc == 0, stderr
    assert "Applied the decisions" in stdout

    # on disk: merge + convert hold the edit and the restored pair, and lack the rejected pair
    r = CliRunner().invoke(cli, ["merge", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and "1 edited" in r.output and "1 rejected" in r.output, r.output
    test_questions = [x["prompt"] for x in rows(out / "test.jsonl")]
    assert new_question in test_questions
    assert rejected_question not in test_questions
    assert restored_question in test_questions
    assert not set(test_questions) & train_questions
    conv = tmp_path / "conv"
    r = CliRunner().invoke(cli, ["convert", str(out), str(conv), "-t", "messages"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    converted = [x["messages"][0]["content"] for x in rows(conv / "test.jsonl")]
    assert new_question in converted and restored_question in converted and rejected_question not in converted
    assert len(converted) == test_rows  # one edited in place, one rejected, one restored
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review"]["applied_edited"] == 1 and manifest["review"]["applied_restored"] == 1
    assert "reviewed" in (out / "README.md").read_text()


def test_screenshot_for_the_docs(out, browser):
    """docs/review.png (the README shows it) is taken from the real page, with DATAKEG_SCREENSHOT=1."""
    srv = Review(out)
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 860})
        page.goto(srv.url + "#split=train&i=4")
        ready(page)
        assert position(page).startswith("4 / ")
        assert page.locator("#chunk mark").count() > 0  # the answer's words are highlighted in the source
        if os.environ.get("DATAKEG_SCREENSHOT"):
            page.screenshot(path=str(ROOT / "docs" / "review.png"))
    finally:
        rc, _, _ = srv.stop()
    assert rc == 0


def test_host_warning_and_missing_out(tmp_path, out):
    srv = Review(out, "--host", "0.0.0.0")
    rc, _, stderr = srv.stop()
    assert rc == 0 and "warning: listening on 0.0.0.0" in stderr
    r = CliRunner().invoke(cli, ["review", str(tmp_path)])
    assert r.exit_code != 0 and "not an output folder" in r.output


def test_bulk_reject_of_the_filtered_set(out, browser, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    valid = [p for p in rows(copy / "provenance.jsonl") if p["split"] == "valid"]
    file = valid[0]["file"]
    chosen = [p["question"] for p in valid if p["file"] == file]
    srv = Review(copy, "--no-apply")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(srv.url + "#split=valid&kind=row")
        ready(page)
        page.select_option("#f-file", file)
        wait_position(page, f"1 / {len(chosen)}")
        page.on("dialog", lambda d: d.accept())
        page.click("#bulk-reject")
        wait(page, "() => document.getElementById('message').textContent.startsWith('Rejected')")
        assert page.text_content("#message") == f"Rejected {len(chosen)} pair(s)."
        assert f"{len(chosen)} rejected" in page.text_content("#counts")
    finally:
        rc, stdout, _ = srv.stop()
    assert rc == 0 and "Applied" not in stdout  # --no-apply
    assert all(q in [x["question"] for x in rows(copy / "provenance.jsonl")] for q in chosen)
    CliRunner().invoke(cli, ["merge", str(copy)], catch_exceptions=False)
    left = [x["question"] for x in rows(copy / "provenance.jsonl") if x["split"] == "valid"]
    assert not set(chosen) & set(left) and len(left) == len(valid) - len(chosen)
