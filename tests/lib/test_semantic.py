"""Semantic near-duplicates (--semantic-dedupe) with the real packaged all-MiniLM-L6-v2: what it
catches that TF-IDF misses, what it must not flag, the model's provenance check, and the exact
pair search against a brute-force product."""

import hashlib
import os
import sys
import zipfile

import numpy as np
import pytest

from conftest import skip_without_the_semantic_extra

from datakeg.curation import semantic as sem
from datakeg.errors import ConfigError, DatakegError
from datakeg.curation.leakage import find_leaks, tfidf_matrix
from datakeg.curation.quality import normalize_question

# Rewordings written for this test: same question, other words. Sentence-embedding cosine with the
# packaged model >= 0.85 for all of these (measured: 0.91-0.96)...
REWORDINGS = [
    ("What is the default port of the server?", "Which port does the server listen on by default?"),
    ("How do I install the command-line tool?", "What are the steps to install the command-line tool?"),
    ("Where does the tool store its cache?", "In which folder does the tool keep its cache?"),
    ("How do I change the output format to JSON?", "How can the output be switched to JSON format?"),
    ("Which Python version is required?", "What version of Python do I need?"),
    ("How do I count only the headings?", "Is there a way to count just the headings?"),
    ("Does Tallyho modify my files?", "Will Tallyho change the files it reads?"),
]
# ... and these it misses at 0.85 (0.68-0.81): the limit the README states.
MISSED = [
    ("How can I see more detailed log output?", "How do I make the logs more detailed?"),
    ("What happens when a file cannot be read?", "What does the tool do if it fails to read a file?"),
    ("What exit code means that a check failed?", "Which exit status is returned when a check fails?"),
    ("How do I exclude a folder from the count?", "How can a directory be left out of the count?"),
]
# Different questions that share most words: none may be flagged (embedding cosine 0.31-0.76).
DIFFERENT = [
    ("How do I install the command-line tool?", "How do I uninstall the command-line tool?"),
    ("What is the default port of the server?", "What is the maximum request size of the server?"),
    ("Where does the tool store its cache?", "Where does the tool write its log file?"),
    ("How do I change the output format to JSON?", "How do I change the output format to CSV?"),
    ("Which Python version is required?", "Which operating systems are supported?"),
    ("What exit code means that a check failed?", "What exit code means success?"),
]
# Chinese: a true rewording, and two different questions (uninstall / configure). The English
# model scores both pairs 1.0 (it reads few of these characters), so it must not compare them at all.
CHINESE = [("怎样安装这个命令行工具？", "如何安装命令行工具？"), ("如何卸载命令行工具？", "如何配置命令行工具？")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    skip_without_the_semantic_extra()
    os.environ["DATAKEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        m = sem.SemanticModel()
        m.check()
        yield m
    finally:
        os.environ.pop("DATAKEG_CACHE_DIR", None)


def tfidf_cosine(a: str, b: str) -> float:
    x = tfidf_matrix([normalize_question(a), normalize_question(b)])
    return float((x[0] @ x[1].T).toarray()[0, 0])


def leaks_between(pairs, model, threshold=0.9):
    """find_leaks over train = first of each pair, test = second; returns the flagged test items."""
    qs = [a for a, _ in pairs] + [b for _, b in pairs]
    n = len(pairs)
    # each pair in its own document, so only the cross-split rule applies
    leaks = find_leaks(qs, ["train"] * n + ["test"] * n, list(range(n)) * 2, threshold, semantic=model)
    return {lk.index - n: lk for lk in leaks}


def test_embeddings_catch_rewordings_that_tfidf_misses(model):
    # the independent truth: TF-IDF cosine of every planted rewording is far under the 0.9 rule,
    # and rapidfuzz (the per-document duplicate check, 90 by default) misses them too
    from rapidfuzz import fuzz

    assert max(tfidf_cosine(a, b) for a, b in REWORDINGS + MISSED) < 0.8
    assert max(fuzz.token_sort_ratio(normalize_question(a), normalize_question(b)) for a, b in REWORDINGS) < 90
    assert leaks_between(REWORDINGS, None) == {}  # the TF-IDF audit alone finds none of them
    found = leaks_between(REWORDINGS, model)
    assert sorted(found) == list(range(len(REWORDINGS)))
    for i, lk in found.items():
        assert lk.method == "semantic" and lk.kind == "test~train" and lk.other == i and lk.score >= 0.85
    assert leaks_between(MISSED, model) == {}  # the stated limit at 0.85
    assert len(leaks_between(MISSED, sem.SemanticModel(threshold=0.65))) == len(MISSED)


def test_different_questions_with_shared_words_are_not_flagged(model):
    assert leaks_between(DIFFERENT, model) == {}
    scores = model.embed([a for a, _ in DIFFERENT]) * model.embed([b for _, b in DIFFERENT])
    assert scores.sum(axis=1).max() < 0.85


def test_english_model_leaves_chinese_to_tfidf(model, tmp_path):
    assert leaks_between(CHINESE, model) == {}
    assert not model.eligible(CHINESE[0][0]) and model.eligible("Wie installiere ich das CLI?")
    # a model folder the user names compares every language (here the same weights, to show the rule)
    own = sem.SemanticModel(sem.packaged_model_dir())
    assert own.eligible(CHINESE[0][0])
    # every question after the first is "the same" (both test ones, and the second train question as
    # a repeat across documents): why the English model must not judge Chinese
    assert set(leaks_between(CHINESE, own)) == {-1, 0, 1}


def test_tfidf_leak_is_reported_as_tfidf_and_duplicates_inside_a_document(model):
    qs = ["What is the default port of the server?", "What is the default port of the server ?",
          "Which port does the server listen on by default?", "How do I install the command-line tool?"]
    # same split, same document: never flagged without duplicates=True
    assert find_leaks(qs[1:], ["train"] * 3, [0] * 3, 0.9, semantic=model) == []
    leaks = find_leaks(qs, ["train", "valid", "train", "train"], [0] * 4, 0.9, semantic=model, duplicates=True)
    by_index = {lk.index: lk for lk in leaks}
    assert set(by_index) == {1, 2}
    assert (by_index[1].method, by_index[1].kind, by_index[1].other) == ("tfidf", "valid~train", 0)
    assert (by_index[2].method, by_index[2].kind, by_index[2].other) == ("semantic", "duplicate", 0)
    # the semantic check alone (TF-IDF threshold 0) still finds both
    assert {lk.index for lk in find_leaks(qs, ["train", "valid", "train", "train"], [0] * 4, 0.0,
                                          semantic=model, duplicates=True)} == {1, 2}


def test_pair_search_is_exact_against_a_brute_force_product(model, monkeypatch):
    rng = np.random.default_rng(7)
    words = "install cache port server output json file folder count heading log exit code python".split()
    texts = sorted({" ".join(rng.choice(words, size=rng.integers(3, 7))) + "?" for _ in range(300)})
    e = model.embed(texts)
    sim = e @ e.T
    truth = {(i, j) for i in range(len(texts)) for j in range(i) if sim[i, j] >= model.threshold}
    assert len(truth) > 50  # the check means something
    monkeypatch.setattr(sem, "BLOCK_CELLS", 5000)  # blocks of 5000 // ~300 = 16 rows: about 19 blocks
    seen = []
    real_matmul = np.ndarray.__matmul__

    class Spy(np.ndarray):
        def __matmul__(self, other):
            seen.append(self.shape[0] * other.shape[1])
            return real_matmul(np.asarray(self), np.asarray(other))

    monkeypatch.setattr(model, "embed", lambda t, embed=model.embed: embed(t).view(Spy))
    rows, cols, scores = model.similar_pairs(texts)
    assert len(seen) > 10 and max(seen) <= 5000  # memory per block is bounded
    assert set(zip(rows.tolist(), cols.tolist())) == truth
    assert np.allclose(scores, sim[rows, cols])


def test_packaged_weights_are_the_pinned_ones(model):
    folder = sem.packaged_model_dir()
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    # sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
    assert digest == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert sem.packaged_model_dir() == folder and (folder / "model.safetensors").stat().st_mtime_ns == before


def test_tampered_package_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / sem.PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('datakeg must not import this package')\n")
    with zipfile.ZipFile(pkg / "model.zip", "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.safetensors", b"not the weights")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    monkeypatch.setenv("DATAKEG_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatakegError, match="SHA-256"):
        sem.packaged_model_dir()
    assert not any((tmp_path / "cache").rglob("model.safetensors"))  # nothing unpacked


def test_missing_package_and_bad_folder_say_what_to_do(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / sem.PACKAGE
    pkg.mkdir(parents=True)  # the package without its model.zip
    (pkg / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    with pytest.raises(ConfigError, match="not installed") as info:
        sem.packaged_model_dir()
    assert "datakeg[semantic]" in info.value.hint
    with pytest.raises(ConfigError, match="not a model folder"):
        sem.SemanticModel(tmp_path).check()
    with pytest.raises(ConfigError, match="semantic-threshold"):
        sem.SemanticModel(threshold=1.5)
