"""Exact near-duplicate search for the leakage audit.

Questions are compared as TF-IDF character n-gram vectors (``char_wb`` 3-5-grams, sublinear tf,
float32, L2-normalised: the same representation as :mod:`datakeg.audit`). Every pair whose cosine
similarity is >= the threshold is found: the search has no heuristic candidate filter that can miss
a pair, only bounds that are proven (a test checks it against a brute-force dense product).

Algorithm (All-Pairs prefix filtering, Bayardo et al. 2007, with the positional l2 bound of L2AP):

* features are ordered rarest first and every vector's entries are read in that order;
* each vector keeps a *prefix*: its entries up to the point where the l2 norm of what is left
  (the *suffix*) is below a depth ``d <= threshold``. For two unit vectors x, y with cosine >= t,
  let f be the rarest feature they share: if f were in x's suffix, every shared feature would be,
  and x.y <= |x_suffix| |y| < t. So f lies in both prefixes: candidates are the pairs whose
  prefixes intersect, a sparse product of the prefix matrix with itself, computed in row blocks
  (each row against the rows before it only);
* that product also gives s = the part of x.y over the features in both prefixes (those rarer
  than m, the first suffix feature of the vector whose prefix ends first). The rest of x.y lies
  over features not rarer than m, so x.y <= s + |x_{>=m}| |y_{>=m}|: pairs whose bound is below
  the threshold are dropped (first with |y_{>=m}| <= 1, then with the exact positional norms);
* the few remaining pairs are scored exactly on the full vectors (float64).

A depth below the threshold makes the product larger but the bound much tighter; the depth is
chosen from the prefix sizes so that the product's multiply-adds stay within a budget proportional
to the number of questions.

numpy, scipy and scikit-learn are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "valid", "test")
BLOCK = 2048                 # rows per block of the candidate product (at most)
BLOCK_WORK = 8_000_000       # multiply-adds per block at most (fewer rows where prefixes are common)
SCORE_CHUNK = 25_000         # candidate pairs scored at a time (bounds the scoring step's memory; larger chunks are no faster)
PRODUCT_BUDGET = 8000        # candidate-product multiply-adds allowed per question when choosing the depth
EPS = 1e-4                   # slack on every bound (float32 vectors): bounds only ever keep more


def preload_libraries() -> None:
    """Import the libraries this module loads lazily (numpy, scipy, scikit-learn: about a second
    on a cold start) in a background thread, so that a run loads them while its requests are in
    flight rather than at its audit. Not a daemon: an early exit waits for it rather than
    stopping it inside an import. Does nothing once they are loaded."""
    import sys
    import threading

    if "sklearn.preprocessing" in sys.modules:
        return

    def load() -> None:
        try:
            import numpy  # noqa: F401
            import scipy.sparse  # noqa: F401
            import sklearn.preprocessing  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken install is reported by the audit itself
            pass

    threading.Thread(target=load, name="datakeg-preload", daemon=False).start()


@dataclass(frozen=True)
class Leak:
    index: int      # the item removed
    other: int      # the kept item it is too similar to
    score: float
    kind: str       # "valid~train", "test~train", "test~valid", "repeat" (same split, other document)
    #                 or "duplicate" (same split and document: semantic only, with duplicates=True)
    method: str = "tfidf"  # "tfidf" (TF-IDF or exact repeat) or "semantic" (only the embeddings found it)


def tfidf_matrix(texts: list[str]):
    """L2-normalised TF-IDF vectors (scipy CSR, float32, one row per text) of ``texts`` as given:
    the same matrix as scikit-learn's ``TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5),
    dtype=np.float32, sublinear_tf=True).fit_transform(texts)`` (columns in its order too), built
    faster: char_wb n-grams never cross a word boundary, so the n-grams of each distinct word are
    listed once and the counts are a sparse product (questions x words) @ (words x n-grams).
    Pass normalised questions. Rows of texts without any word are all zero; so is a matrix with
    no vocabulary at all."""
    from collections import defaultdict

    import numpy as np
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    vocab: defaultdict[str, int] = defaultdict()
    vocab.default_factory = vocab.__len__
    ids: list[int] = []
    indptr = [0]
    for text in texts:
        ids.extend(map(vocab.__getitem__, text.lower().split()))
        indptr.append(len(ids))
    if not vocab:
        return sp.csr_matrix((len(texts), 0), dtype=np.float32)
    words = sp.csr_matrix((np.ones(len(ids), np.float32), np.asarray(ids, np.int64), np.asarray(indptr, np.int64)),
                          shape=(len(texts), len(vocab)))
    gram_ids: dict[str, int] = {}
    m_ids: list[int] = []
    m_ptr = [0]
    for word in vocab:  # insertion order: word id order
        m_ids.extend(gram_ids.setdefault(g, len(gram_ids)) for g in _char_wb_ngrams(word))
        m_ptr.append(len(m_ids))
    # columns in sorted n-gram order, as scikit-learn's vocabulary
    names = sorted(gram_ids)
    column = np.empty(len(names), np.int64)
    column[np.asarray([gram_ids[g] for g in names], np.int64)] = np.arange(len(names))
    grams = sp.csr_matrix((np.ones(len(m_ids), np.float32), column[np.asarray(m_ids, np.int64)],
                           np.asarray(m_ptr, np.int64)), shape=(len(vocab), len(names)))
    x = (words @ grams).tocsr()
    del words, grams
    x.sum_duplicates()
    x.sort_indices()
    # TfidfTransformer(sublinear_tf=True), in place on the float32 counts (its own transform makes
    # several float64 copies of a matrix that holds 16M entries at 100k questions): tf = 1 + ln(count),
    # smooth idf = ln((1 + n) / (1 + df)) + 1, then rows scaled to unit L2 norm
    df = np.bincount(x.indices, minlength=x.shape[1])
    idf = (np.log((1.0 + x.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)
    np.log(x.data, out=x.data)
    x.data += 1.0
    x.data *= idf[x.indices]
    return normalize(x, norm="l2", copy=False)


def _char_wb_ngrams(word: str, lo: int = 3, hi: int = 5) -> list[str]:
    """scikit-learn's char_wb n-grams of one word (a word shorter than n yields itself once)."""
    w = " " + word + " "
    out = []
    for n in range(lo, hi + 1):
        if len(w) <= n:
            out.append(w)
            break
        out.extend(w[k:k + n] for k in range(len(w) - n + 1))
    return out


def brute_force_pairs(x, threshold: float):
    """Reference for tests: every (i, j, cosine) with j < i and cosine >= threshold, from the full
    product of all rows with all rows (float64, densified). Quadratic: a few thousand rows at most."""
    import numpy as np

    x = x.astype(np.float64)
    sims = (x @ x.T).toarray()
    i, j = np.nonzero(np.tril(sims >= threshold, k=-1))
    return i, j, sims[i, j]


def similar_pairs(x, threshold: float, limit=None, stats: dict | None = None, depth: float | None = None,
                  consume: bool = False):
    """Every pair (i, j) with j < limit[i] and cosine(x[i], x[j]) >= threshold, exactly.

    ``x``: CSR matrix of L2-normalised non-negative rows (zero rows match nothing).
    ``limit``: per-row bound on j (default ``limit[i] = i``, i.e. all unordered pairs once).
    Returns numpy arrays (i, j, score), sorted by i then j; scores are float64 cosines.
    ``stats``, when given, receives counts of the stages (for benchmarks). ``depth`` (0 < depth <=
    threshold) forces the prefix depth instead of choosing it (for tests and benchmarks).
    ``consume``: ``x`` (float32 CSR) may be changed in place, its columns renumbered, rather than
    copied (one matrix less in memory; the callers in this module pass it)."""
    import itertools
    import time

    import numpy as np
    import scipy.sparse as sp

    n = x.shape[0]
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if limit is None:
        limit = np.arange(n, dtype=np.int64)
    limit = np.minimum(np.asarray(limit, dtype=np.int64), np.arange(n, dtype=np.int64))
    if stats is not None:
        stats.update(depth=None, candidates=0, bounded=0, verified=0, pairs=0)
    if threshold <= 0:
        raise ValueError("threshold must be > 0")
    if n < 2 or threshold > 1 + EPS or x.nnz == 0 or not limit.any():
        return empty

    # features rarest first (ties by column: deterministic), entries of each row in that order
    nf = x.shape[1]
    df = np.bincount(x.indices, minlength=nf)
    # Arrays with one value per non-zero entry dominate memory (16M entries at 100k questions: 64 MB
    # per int32/float32 array, 128 MB per float64 one), so they are int32 where they can be and
    # built in place, one temporary at a time.
    rank = np.empty(nf, dtype=np.int32)
    rank[np.lexsort((np.arange(nf), df))] = np.arange(nf, dtype=np.int32)
    if consume and x.dtype == np.float32 and x.indices.dtype == np.int32:
        x.indices[:] = rank[x.indices]
        x.has_sorted_indices = False
    else:
        x = sp.csr_matrix((x.data.astype(np.float32), rank[x.indices], x.indptr.copy()), shape=x.shape)
    del rank, df
    x.sort_indices()
    indptr = x.indptr.astype(np.int64)
    rowlen = np.diff(indptr)
    rowid = np.repeat(np.arange(n, dtype=np.int32), rowlen)
    tail, rowtot = _suffix_squares(x.data, indptr)          # squares from entry k to its row's end; per row

    if depth is None:
        depth = _choose_depth(tail, x.indices, limit, threshold, nf)
    elif not 0 < depth <= threshold:
        raise ValueError("depth must be in (0, threshold]")
    inpre = tail >= (depth - EPS) ** 2                      # a head of every row
    plen = np.bincount(rowid[inpre], minlength=n)
    # first suffix entry of each row: its rank (nf when the whole row is prefix) and the suffix norm
    has_suf = plen < rowlen
    first_suf = indptr[:-1] + plen
    cut = np.full(n, nf, dtype=np.int64)
    cut[has_suf] = x.indices[first_suf[has_suf]]
    sufn = np.zeros(n, dtype=np.float64)
    sufn[has_suf] = np.sqrt(np.maximum(tail[first_suf[has_suf]], 0.0))
    prefix = sp.csr_matrix((x.data[inpre], x.indices[inpre], np.concatenate([[0], np.cumsum(plen)])),
                           shape=x.shape)
    # blocks of rows whose share of the product (sum over prefix features of their prefix counts, an
    # upper bound on its entries) stays within BLOCK_WORK: bounded memory at low thresholds
    per_feature = np.bincount(x.indices[inpre], minlength=nf).astype(np.float64)
    work = np.cumsum(np.bincount(rowid[inpre], weights=per_feature[x.indices[inpre]], minlength=n))
    starts = [0]
    while starts[-1] < n:
        s0 = starts[-1]
        base = work[s0 - 1] if s0 else 0.0
        e0 = int(np.searchsorted(work, base + BLOCK_WORK, side="right"))
        starts.append(min(n, max(e0, s0 + 1), s0 + BLOCK))
    del inpre, rowid, per_feature, work
    ymax = float(np.sqrt(rowtot.max()))                     # |y| (1 up to rounding)
    crude = threshold - (depth - EPS) * ymax - EPS          # s + |x_suffix| |y| >= t needs s >= this

    clock = time.perf_counter
    t_product = t_bound = 0.0
    ci, cj = [], []
    for s, e in itertools.pairwise(starts):
        top = int(limit[s:e].max())
        if top <= 0:
            continue
        t0 = clock()
        w = prefix[s:e] @ prefix[:top].T
        t1 = clock()
        if stats is not None:
            stats["candidates"] += w.nnz
        keep = np.flatnonzero(w.data >= crude)
        rows = s + np.searchsorted(w.indptr, keep, side="right") - 1
        cols = w.indices[keep].astype(np.int64)
        spp = w.data[keep].astype(np.float64)
        del w, keep
        ok = cols < limit[rows]
        rows, cols, spp = rows[ok], cols[ok], spp[ok]
        if stats is not None:
            stats["bounded"] += len(rows)
        # x = the row whose prefix ends first (at rank m), y the other one: x.y <= s + |x_suffix| |y|
        first = cut[rows] <= cut[cols]
        xr, yr = np.where(first, rows, cols), np.where(first, cols, rows)
        ok = spp + sufn[xr] * np.sqrt(rowtot[yr]) >= threshold - EPS
        rows, cols, spp, xr, yr = rows[ok], cols[ok], spp[ok], xr[ok], yr[ok]
        # positional bound: x.y <= s + |x_suffix| |y_{>=m}|
        pos = _search_rows(x.indices, indptr, yr, cut[xr])
        inrow = pos < indptr[yr + 1]                         # |y_{>=m}|^2: y's squares from pos on
        ytail = np.zeros(len(pos), dtype=np.float64)
        ytail[inrow] = np.sqrt(np.maximum(tail[pos[inrow]], 0.0))
        ok = spp + sufn[xr] * ytail >= threshold - EPS
        ci.append(rows[ok])
        cj.append(cols[ok])
        t_product += t1 - t0
        t_bound += clock() - t1
    if stats is not None:
        stats.update(depth=depth, product_s=round(t_product, 3), bound_s=round(t_bound, 3))
    del tail
    if not ci:
        return empty
    t0 = clock()
    rows, cols = np.concatenate(ci), np.concatenate(cj)
    del ci, cj
    if stats is not None:
        stats["verified"] = len(rows)
    scores = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), SCORE_CHUNK):
        a = x[rows[s:s + SCORE_CHUNK]].astype(np.float64)
        b = x[cols[s:s + SCORE_CHUNK]].astype(np.float64)
        scores[s:s + SCORE_CHUNK] = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    if stats is not None:
        stats["score_s"] = round(clock() - t0, 3)
    hit = scores >= threshold
    rows, cols, scores = rows[hit], cols[hit], scores[hit]
    order = np.lexsort((cols, rows))
    if stats is not None:
        stats["pairs"] = len(rows)
    return rows[order], cols[order], scores[order]


def _suffix_squares(data, indptr, entries: int = 1 << 20):
    """(tail, rowtot): tail[k] = the sum of the squares of the entries of k's row from k to the
    row's end (float32: what the prefix bounds read, far inside their EPS slack), rowtot = each
    row's squared norm (float64). Summed in float64 over rows of about ``entries`` entries at a
    time, so no array of one float64 per entry of the matrix is ever held."""
    import numpy as np

    n = len(indptr) - 1
    tail = np.empty(int(indptr[-1]), dtype=np.float32)
    rowtot = np.zeros(n, dtype=np.float64)
    r0 = 0
    while r0 < n:
        r1 = max(r0 + 1, int(np.searchsorted(indptr, indptr[r0] + entries, side="right")) - 1)
        r1 = min(r1, n)
        a, b = int(indptr[r0]), int(indptr[r1])
        squares = data[a:b].astype(np.float64)
        squares *= squares
        csum = np.zeros(b - a + 1, dtype=np.float64)        # csum[k]: squares of the chunk's entries before k
        np.cumsum(squares, out=csum[1:])
        ends = indptr[r0 + 1:r1 + 1] - a
        starts = indptr[r0:r1] - a
        rowtot[r0:r1] = csum[ends] - csum[starts]
        tail[a:b] = np.repeat(csum[ends], ends - starts) - csum[:-1]
        r0 = r1
    return tail, rowtot


def _search_rows(indices, indptr, rows, values):
    """For each k: the position of the first entry of row rows[k] whose column is >= values[k]
    (columns sorted inside each row): a binary search, vectorised over all k."""
    import numpy as np

    lo = indptr[rows].copy()
    hi = indptr[rows + 1].copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        go_right = active & (indices[np.minimum(mid, len(indices) - 1)] < values)
        go_left = active & ~go_right
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(go_left, mid, hi)


def _choose_depth(tail, ranks, limit, threshold, nf) -> float:
    """The smallest prefix depth (from ``threshold`` down to 0.55 * threshold, in steps of 0.05)
    whose candidate product (multiply-adds, from the prefix lengths per feature) fits the budget."""
    import numpy as np

    budget = PRODUCT_BUDGET * max(int((limit > 0).sum()), 1)
    best = threshold
    d = threshold
    while d >= 0.55 * threshold - 1e-9:
        inpre = tail >= (d - EPS) ** 2
        per_feature = np.bincount(ranks[inpre], minlength=nf).astype(np.float64)
        if float((per_feature * (per_feature - 1)).sum()) / 2 > budget:
            break
        best = d
        d = round(d - 0.05, 10)
    return best


def leaking(train: list[str], candidates: list[str], threshold: float) -> list[tuple[int, float, int]]:
    """(candidate index, similarity, most similar train index) for each candidate whose best cosine
    similarity to a train question is >= threshold, in candidate order; exact (no pair is missed).

    Drop-in for :func:`datakeg.audit.leaking`: questions go through ``normalize_question``; an exact
    repeat of a train question (after normalisation, empty ones included) always scores 1.0. Ties
    go to the smallest train index."""
    if not train or not candidates or threshold <= 0:
        return []
    import numpy as np

    from datakeg.curation.quality import normalize_question

    train_n = [normalize_question(q) for q in train]
    cand_n = [normalize_question(q) for q in candidates]
    nt = len(train_n)
    x = tfidf_matrix(train_n + cand_n)
    limit = np.concatenate([np.zeros(nt, np.int64), np.full(len(cand_n), nt, np.int64)])
    rows, cols, scores = similar_pairs(x, threshold, limit, consume=True)
    del x
    best: dict[int, tuple[float, int]] = {}
    exact: dict[str, int] = {}
    for i, q in enumerate(train_n):
        exact.setdefault(q, i)
    for i, q in enumerate(cand_n):
        if q in exact:
            best[i] = (1.0, exact[q])
    for r, c, s in zip(rows.tolist(), cols.tolist(), scores.tolist()):
        i, s = r - nt, min(s, 1.0)
        if i not in best or s > best[i][0] or (s == best[i][0] and c < best[i][1]):
            best[i] = (s, c)
    return [(i, best[i][0], best[i][1]) for i in sorted(best)]


def find_leaks(questions: list[str], splits: list[str], docs: list, threshold: float, semantic=None,
               duplicates: bool = False) -> list[Leak]:
    """The items to remove so that no kept valid/test question leaks a kept question of an earlier
    split and no split repeats a question across documents.

    Items are processed train first, then valid, then test (by index inside a split). An item is
    removed when its cosine similarity is >= threshold to an earlier KEPT item that is in an
    earlier split or in the same split but another document; ``other`` is the most similar such
    item (ties: the earliest processed). Same split and same document is never a leak. Exact
    repeats after ``normalize_question`` (empty ones included) always score 1.0. A threshold <= 0
    switches the TF-IDF check off.

    ``semantic`` (a :class:`datakeg.curation.semantic.SemanticModel`) adds the pairs whose sentence
    embeddings are at least its threshold apart in cosine; with ``duplicates`` such a pair also
    counts inside one split of one document (kind "duplicate": a rewording the per-document
    rapidfuzz check cannot see). A leak found by TF-IDF is reported as such (``method`` "tfidf")
    even when the embeddings agree; "semantic" marks what only they found. Returns the removed
    items sorted by index."""
    n = len(questions)
    if len(splits) != n or len(docs) != n:
        raise ValueError("questions, splits and docs must have the same length")
    bad = sorted({s for s in splits if s not in SPLITS})
    if bad:
        raise ValueError(f"unknown split(s): {', '.join(map(str, bad))}")
    if n == 0 or (threshold <= 0 and semantic is None):
        return []
    import numpy as np

    from datakeg.curation.quality import normalize_question

    split_rank = {s: k for k, s in enumerate(SPLITS)}
    order = sorted(range(n), key=lambda i: (split_rank[splits[i]], i))
    pos = [0] * n
    for p, i in enumerate(order):
        pos[i] = p
    norm = [normalize_question(q) for q in questions]
    # one group per distinct normalised text, numbered in processing order
    gid: dict[str, int] = {}
    group = [0] * n
    first_item: list[int] = []
    for i in order:
        g = gid.get(norm[i])
        if g is None:
            g = gid[norm[i]] = len(first_item)
            first_item.append(i)
        group[i] = g
    neighbours: list[list[tuple[int, float, str]]] = [[] for _ in first_item]
    found = []
    if threshold > 0:
        x_all = tfidf_matrix(norm)
        x = x_all[np.asarray(first_item, dtype=np.int64)]
        del x_all
        found.append(("tfidf", similar_pairs(x, threshold, consume=True)))
        del x
    if semantic is not None:
        found.append(("semantic", semantic.similar_pairs([questions[i] for i in first_item])))
    for method, (rows, cols, scores) in found:
        for g, h, s in zip(rows.tolist(), cols.tolist(), scores.tolist()):
            s = min(s, 1.0)
            neighbours[g].append((h, s, method))
            neighbours[h].append((g, s, method))

    # Kept items of one group all share one (split, doc): the first kept one's (any later item of the
    # group from another split or document is removed by it). So a group is summed up by its first
    # kept item, and an item leaks through a group iff that group has a kept item of another
    # (split, doc) than its own.
    kept_first: list[int | None] = [None] * len(first_item)
    leaks = []
    for a in order:
        key = (splits[a], docs[a])
        best = None  # (found by TF-IDF or exact, score, -pos of other, other, method)
        candidates = [(group[a], 1.0, "tfidf")] + neighbours[group[a]]
        for h, s, method in candidates:
            b = kept_first[h]
            if b is None:
                continue
            if (splits[b], docs[b]) == key and not (duplicates and method == "semantic"):
                continue
            cand = (method != "semantic", s, -pos[b], b, method)
            if best is None or cand[:3] > best[:3]:
                best = cand
        if best is None:
            if kept_first[group[a]] is None:
                kept_first[group[a]] = a
            continue
        _, s, _, b, method = best
        if splits[b] != splits[a]:
            kind = f"{splits[a]}~{splits[b]}"
        else:
            kind = "duplicate" if docs[b] == docs[a] else "repeat"
        leaks.append(Leak(index=a, other=b, score=float(s), kind=kind, method=method))
    leaks.sort(key=lambda l: l.index)
    return leaks
