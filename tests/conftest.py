import shutil
from pathlib import Path

import pytest

from datakeg.testing.fake_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[1]
TESTDOC = ROOT / "testdoc"
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture
def server():
    """A cooperative fake LLM server; tests that need faults build their own."""
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def corpus(tmp_path):
    """A private copy of the real documents in ../shared/corpus."""
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {CORPUS}")
    dest = tmp_path / "corpus"
    shutil.copytree(CORPUS, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest
