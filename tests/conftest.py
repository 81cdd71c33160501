import shutil
from pathlib import Path

import pytest

from datakeg.testing.fake_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[1]
TESTDOC = ROOT / "testdoc"
# The three original short pages of testdoc (about 1,700 characters): enough for tests that need
# a real dataset but whose cost grows with its size (fine-tuning steps scale with the train rows).
SMALL_TESTDOC = ("README.md", "guide/README.md", "guide/faq.txt")


def wait_for_requests(srv, n: int, proc=None, timeout: float = 60.0) -> None:
    """Wait until ``srv`` has received ``n`` chat requests (or ``proc`` ended, or time is up), so a
    signal sent next lands in the middle of a run."""
    import time

    deadline = time.time() + timeout
    while len(srv.requests) < n and (proc is None or proc.poll() is None) and time.time() < deadline:
        time.sleep(0.01)


@pytest.fixture
def server():
    """A cooperative fake LLM server; tests that need faults build their own."""
    with FakeLLMServer() as srv:
        yield srv


def copy_testdoc(dest: Path, only: tuple[str, ...] | None = None) -> Path:
    """Copy testdoc (or only the given relative paths of it) to ``dest``, writable, and return it."""
    if only is None:
        shutil.copytree(TESTDOC, dest)
    else:
        for rel in only:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(TESTDOC / rel, dest / rel)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


@pytest.fixture
def corpus(tmp_path):
    """A private copy of the project's own documents in testdoc/ (about 23,000 characters in 8 files:
    a long reference page with tables and code, Chinese and Japanese pages, two README.md and two
    quickstart.md in different folders, plain and reStructuredText-style .txt, a tiny changelog)."""
    return copy_testdoc(tmp_path / "corpus")


@pytest.fixture
def small_testdoc(tmp_path):
    """A private copy of testdoc's three short pages, for tests whose time grows with the requests."""
    return copy_testdoc(tmp_path / "small", only=SMALL_TESTDOC)


def shared_text_docs(src: Path) -> Path:
    """Three documents that share most of their text (testdoc's README), each with a tail of its
    own so that new questions can be found: the same questions come up in every split of every
    document, so the leakage audit removes and backfills pairs."""
    import random

    src.mkdir(parents=True, exist_ok=True)
    base = (TESTDOC / "README.md").read_text()
    rng = random.Random(5)
    words = sorted({"".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
                    for _ in range(3000)})
    for name in ("a.md", "b.md", "c.md"):
        extra = "\n\n" + " ".join(" ".join(rng.sample(words, 7)).capitalize() + "." for _ in range(40))
        (src / name).write_text(base + extra)
    return src


def skip_without_the_semantic_extra():
    """Skip (cleanly) where the [semantic] extra is missing: sentence-transformers, or the packaged
    all-MiniLM-L6-v2 weights. CI installs the extra, so there these tests run."""
    import importlib.util
    from pathlib import Path as _Path

    from datakeg.curation.semantic import PACKAGE

    try:  # pytest.importorskip, but also for an ImportError raised inside the package (torch missing)
        import sentence_transformers  # noqa: F401
    except ImportError:
        pytest.skip("needs the [semantic] extra (sentence-transformers): pip install -e '.[semantic]'")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not any((_Path(p) / "model.zip").is_file() for p in spec.submodule_search_locations or []):
        pytest.skip("needs the [semantic] extra (the packaged all-MiniLM-L6-v2): pip install -e '.[semantic]'")
