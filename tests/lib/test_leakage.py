import random
import subprocess
import sys

import numpy as np
import pytest

from datakeg.curation.leakage import (
    Leak,
    brute_force_pairs,
    find_leaks,
    leaking,
    similar_pairs,
    tfidf_matrix,
)
from datakeg.curation.quality import normalize_question

COMMON = """how do i can what is the a to in on of for with from by at my your this that which when where why
does should use set get run make find change add remove export import log file files config server client
user users data error message option default value command line output input mode version update install
start stop restart enable disable create delete list show open close save load read write check test build
project folder path name type key account password access network port host service database table query
report time date format text page view window settings system process memory disk cache limit size""".split()


def common_questions(n: int, seed: int) -> list[str]:
    """Questions made only of common words, plus planted one-word variants (about 1 in 10)."""
    rng = random.Random(seed)
    qs: list[str] = []
    for _ in range(n):
        if qs and rng.random() < 0.1:
            w = rng.choice(qs).rstrip("?").split()
            k = rng.randrange(len(w))
            op = rng.random()
            if op < 0.6:
                w[k] = rng.choice(COMMON)
            elif op < 0.8 or len(w) < 6:
                w.insert(k, rng.choice(COMMON))
            else:
                del w[k]
            qs.append(" ".join(w) + "?")
        else:
            qs.append(" ".join(rng.choice(COMMON) for _ in range(rng.randint(6, 13))).capitalize() + "?")
    return qs


def vectors(qs):
    return tfidf_matrix([normalize_question(q) for q in qs])


def test_import_is_cheap():
    code = ("import sys, datakeg.curation.leakage; "
            "print(sorted(m for m in ('numpy', 'scipy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tfidf_matrix_matches_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    qs = common_questions(300, seed=1) + ["如何导出日志？", "日志", "猫", "a", "ab", "abc b c", "", "?",
                                          "ok ok ok", "Größe ändern", "ログをエクスポートする方法"]
    texts = [normalize_question(q) for q in qs]
    ref = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), dtype=np.float32,
                          sublinear_tf=True).fit_transform(texts)
    x = tfidf_matrix(texts)
    assert x.shape == ref.shape and x.dtype == np.float32
    assert abs(x - ref).max() < 1e-6
    assert tfidf_matrix(["", ""]).shape == (2, 0)
    assert tfidf_matrix([]).shape[0] == 0


@pytest.mark.parametrize("threshold", [0.9, 0.8, 0.6])
@pytest.mark.parametrize("depth", ["auto", "threshold", "deep"])
def test_exact_against_brute_force(threshold, depth):
    """Every pair >= threshold is found (recall 100%), nothing below it is reported, at every prefix
    depth, on questions made only of common words (plus planted one-word variants)."""
    qs = common_questions(2500, seed=7)
    x = vectors(qs)
    forced = {"auto": None, "threshold": threshold, "deep": 0.55 * threshold}[depth]
    i, j, s = similar_pairs(x, threshold, depth=forced)
    bi, bj, bs = brute_force_pairs(x, threshold - 1e-5)
    ref = {(a, b): v for a, b, v in zip(bi.tolist(), bj.tolist(), bs.tolist())}
    got = {(a, b): v for a, b, v in zip(i.tolist(), j.tolist(), s.tolist())}
    assert np.all(j < i)
    for pair, v in ref.items():
        if v >= threshold + 1e-5:
            assert pair in got, pair          # recall
    for pair, v in got.items():
        assert v >= threshold
        assert pair in ref and abs(ref[pair] - v) < 1e-5  # no false positive, same score
    assert len(got) > 100  # the planted variants really are near-copies


def test_exact_with_row_limits():
    """The limit form (queries vs an index of the rows before them) against brute force."""
    qs = common_questions(1500, seed=3)
    x = vectors(qs)
    nt = 900
    limit = np.r_[np.zeros(nt, np.int64), np.full(len(qs) - nt, nt)]
    i, j, _ = similar_pairs(x, 0.85, limit)
    bi, bj, _ = brute_force_pairs(x, 0.85)
    ref = {(a, b) for a, b in zip(bi.tolist(), bj.tolist()) if a >= nt and b < nt}
    assert set(zip(i.tolist(), j.tolist())) == ref and ref


def test_leaking_is_exact_and_compatible():
    qs = common_questions(1200, seed=5)
    train, cands = qs[:800], qs[800:] + [train_q.upper() + "!!" for train_q in qs[:3]]
    got = leaking(train, cands, 0.85)
    x = vectors(train + cands)
    sims = (x[len(train):].astype(np.float64) @ x[:len(train)].T.astype(np.float64)).toarray()
    want = [k for k in range(len(cands)) if sims[k].max() >= 0.85]
    assert [k for k, _, _ in got] == want
    for k, score, t in got:
        assert abs(score - sims[k].max()) < 1e-5 and abs(sims[k, t] - sims[k].max()) < 1e-5
    # exact repeats after normalisation score exactly 1.0
    assert [(k, s, t) for k, s, t in got if k >= 400] == [(400, 1.0, 0), (401, 1.0, 1), (402, 1.0, 2)]
    assert leaking([], cands, 0.9) == [] and leaking(train, [], 0.9) == []
    assert leaking(["?"], ["!!", "x"], 0.9) == [(0, 1.0, 0)]


TOOLS = ["tallyho", "quillrun", "brindle", "marlock", "zephyrd", "kestrel", "gantry", "pellucid", "wobbler",
         "ferrule", "skiffer", "tamarind", "obelisk", "runnel", "hawser", "cinder", "lattice", "morrow",
         "quokka", "spindle", "tundra", "vellum", "yarrow", "zither", "almanac", "bodkin", "caliper", "dovetail",
         "escrow", "fathom", "gimbal", "halyard", "inkwell", "jackdaw", "kiln", "lanyard", "mandrel", "nacelle",
         "oriel", "plinth", "quire", "rivet", "sextant", "trellis", "umber", "vortex", "wicket", "xylem",
         "yeoman", "zenith", "arbor", "bevel", "cleat", "derrick", "ember", "flange", "grommet", "hasp",
         "ingot", "jib"]
ACTIONS = ["export the log", "rotate the keys", "reset the cache", "change the port", "list the users",
           "delete old backups", "restart the service", "check the disk usage", "update the config file",
           "open the settings page"]
SWAPS = [("How do I", "How can I"), ("How do I", "How should I"), (" the ", " a "), (" on ", " in ")]


def base_question(k: int) -> str:
    return f"How do I {ACTIONS[k % len(ACTIONS)]} with {TOOLS[k]} on a shared server?"


def planted_variant(k: int) -> str:
    a, b = SWAPS[k % len(SWAPS)]
    return base_question(k).replace(a, b, 1)


def unrelated(rng: random.Random, n: int) -> list[str]:
    words = [w for w in COMMON if len(w) > 3] + [t + "x" for t in TOOLS]
    return [" ".join(rng.sample(words, 9)).capitalize() + "?" for _ in range(n)]


def test_sixty_planted_one_word_variants_are_all_removed():
    """60 one-word variants made of common words around one tool name, across documents:
    20 valid~train, 20 test~train, 20 test~valid. All removed; every unrelated question kept."""
    rng = random.Random(11)
    items: list[tuple[str, str, int]] = []  # (question, split, doc)
    expect: dict[int, tuple[int, str]] = {}
    where: dict[tuple[str, int], int] = {}

    def add(q, split, doc):
        items.append((q, split, doc))
        return len(items) - 1

    filler = iter(unrelated(rng, 120))
    for k in range(40):  # train: originals T0..T39, two per document, with unrelated questions
        where["T", k] = add(base_question(k), "train", k // 2)
        add(next(filler), "train", k // 2)
    for k in range(20):  # valid: variants of T0..T19 and originals V0..V19 (tools 40..59)
        expect[add(planted_variant(k), "valid", 100 + k)] = (where["T", k], "valid~train")
        where["V", k] = add(base_question(40 + k), "valid", 100 + k)
        add(next(filler), "valid", 100 + k)
    for k in range(20):  # test: variants of T20..T39 and of V0..V19
        expect[add(planted_variant(20 + k), "test", 200 + k)] = (where["T", 20 + k], "test~train")
        expect[add(planted_variant(40 + k), "test", 200 + k)] = (where["V", k], "test~valid")
        add(next(filler), "test", 200 + k)
    qs, splits, docs = (list(col) for col in zip(*items))

    # the scenario holds: every planted pair is >= 0.9, no other pair is
    x = vectors(qs)
    bi, bj, _ = brute_force_pairs(x, 0.9)
    pairs = {(max(a, b), min(a, b)) for a, b in zip(bi.tolist(), bj.tolist())}
    assert pairs == {(i, other) for i, (other, _) in expect.items()}

    leaks = find_leaks(qs, splits, docs, 0.9)
    assert len(leaks) == 60
    assert {l.index: (l.other, l.kind) for l in leaks} == expect
    assert all(0.9 <= l.score <= 1.0 for l in leaks)
    assert [l.index for l in leaks] == sorted(l.index for l in leaks)
    assert find_leaks(qs, splits, docs, 0.9) == leaks  # deterministic


def chain():
    """A, B, C: B ~ A and C ~ B above the returned threshold, C not ~ A."""
    a = "How do I export the weekly audit log with tallyho on a shared server?"
    b = "How can I export the weekly audit log with tallyho on a shared server?"
    c = "How can I export the weekly audit log with tallyho on a shared laptop?"
    rng = random.Random(2)
    filler = unrelated(rng, 30)
    x = vectors([a, b, c] + filler)
    sim = (x[:3].astype(np.float64) @ x[:3].T).toarray()
    t = min(sim[0, 1], sim[1, 2]) - 1e-4
    assert sim[0, 2] < t
    return a, b, c, filler, t


def test_greedy_counts_only_kept_items():
    a, b, c, filler, t = chain()

    def run(qs, splits, docs):  # the same vectors as chain(): unrelated train questions appended
        n = len(filler)
        leaks = find_leaks(qs + filler, splits + ["train"] * n, docs + list(range(100, 100 + n)), t)
        return [(l.index, l.other, l.kind) for l in leaks]

    # A train, B valid (removed: ~A), C test: ~B but B is removed, and not ~A: C stays
    assert run([a, b, c], ["train", "valid", "test"], [1, 2, 3]) == [(1, 0, "valid~train")]
    # the same chain inside train, three documents: B is a repeat of A; C stays
    assert run([a, b, c], ["train"] * 3, [1, 2, 3]) == [(1, 0, "repeat")]
    # priority is by split, not by position: the train item listed last is kept, valid B removed
    assert run([c, b, a], ["test", "valid", "train"], [1, 2, 3]) == [(1, 2, "valid~train")]
    # B kept next to A (same split and document: not a leak): C in test leaks B
    assert run([a, b, c], ["train", "train", "test"], [1, 1, 2]) == [(2, 1, "test~train")]
    # all in test, C first in its own document: C kept, B removed (~C), A kept (B is gone, A not ~C)
    assert run([c, b, a], ["test"] * 3, [1, 2, 3]) == [(1, 0, "repeat")]


def test_repeats_across_documents_keep_the_first():
    q = "What is the default port of the metrics exporter?"
    near = "What is the default port for the metrics exporter?"
    other = "Why does the nightly backup job skip encrypted volumes?"
    qs = [other, q, q, q.upper(), near, q]
    splits = ["valid"] * 6
    docs = [1, 2, 2, 3, 4, 5]
    leaks = find_leaks(qs, splits, docs, 0.85)
    # index 2 is the same document as index 1: not a leak; 3 (other document, exact after
    # normalisation), 4 (near-copy) and 5 repeat index 1
    assert [(l.index, l.other, l.kind) for l in leaks] == [(3, 1, "repeat"), (4, 1, "repeat"), (5, 1, "repeat")]
    assert leaks[0].score == 1.0 and leaks[2].score == 1.0 and 0.85 <= leaks[1].score < 1.0
    assert all(isinstance(l, Leak) for l in leaks)


def test_same_document_same_split_is_not_flagged():
    q = "How do I rotate the signing keys with quillrun?"
    near = "How can I rotate the signing keys with quillrun?"
    assert find_leaks([q, q, near], ["train"] * 3, [7, 7, 7], 0.9) == []
    assert find_leaks([q, q, near], ["test"] * 3, [7, 7, 7], 0.9) == []
    # another split, same document: a leak
    leaks = find_leaks([q, near], ["train", "test"], [7, 7], 0.9)
    assert [(l.index, l.other, l.kind) for l in leaks] == [(1, 0, "test~train")]
    # kept copies inside one document, then another document: removed, against the first
    leaks = find_leaks([q, near, q], ["train"] * 3, [7, 7, 8], 0.9)
    assert [(l.index, l.other, l.kind, l.score) for l in leaks] == [(2, 0, "repeat", 1.0)]


def test_cjk_near_copies():
    zh = "请问，如何在服务器上导出日志文件，并且把它保存到本地目录里面？"
    zh_near = "请问，如何在服务器上导出日志文件，并且把它保存到本地目录中？"
    ja = "サーバーでログファイルをエクスポートして、ローカルのフォルダに保存する方法は？"
    ja_near = "サーバーでログファイルをエクスポートして、ローカルのフォルダへ保存する方法は？"
    unrelated_zh = "为什么夜间备份任务会跳过加密的卷？"
    qs = [zh, ja, unrelated_zh, zh_near, ja_near, "猫", "猫", "？？", "!!"]
    splits = ["train", "train", "train", "valid", "test", "train", "train", "valid", "valid"]
    docs = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    x = vectors(qs)
    sim = (x.astype(np.float64) @ x.T).toarray()
    t = min(sim[0, 3], sim[1, 4]) - 1e-4
    assert t > 0.7 and sim[2, 3] < t and sim[0, 1] < t
    leaks = find_leaks(qs, splits, docs, t)
    assert [(l.index, l.other, l.kind) for l in leaks] == [
        (3, 0, "valid~train"), (4, 1, "test~train"), (6, 5, "repeat"), (8, 7, "repeat")]
    # punctuation-only questions have empty vectors: their exact repeat still scores 1.0
    assert leaks[-1].score == 1.0


def test_empty_and_degenerate_inputs():
    assert find_leaks([], [], [], 0.9) == []
    assert find_leaks(["only one?"], ["test"], [0], 0.9) == []
    assert find_leaks(["", "", "?"], ["train"] * 3, [0, 1, 2], 0.9) == [
        Leak(1, 0, 1.0, "repeat"), Leak(2, 0, 1.0, "repeat")]
    qs = common_questions(200, seed=4)
    one_split = find_leaks(qs, ["test"] * 200, list(range(200)), 0.9)
    assert all(l.kind == "repeat" for l in one_split) and one_split
    assert find_leaks(qs, ["test"] * 200, list(range(200)), 0) == []  # 0 switches it off
    assert find_leaks(qs, ["test"] * 200, [0] * 200, 0.9) == []       # one document
    with pytest.raises(ValueError):
        find_leaks(["a"], ["train", "test"], [0], 0.9)
    with pytest.raises(ValueError):
        find_leaks(["a"], ["dev"], [0], 0.9)
    i, j, s = similar_pairs(tfidf_matrix([]), 0.9)
    assert len(i) == len(j) == len(s) == 0
