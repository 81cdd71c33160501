"""Leakage audit: TF-IDF character n-gram cosine similarity of valid/test questions against train
questions (scikit-learn, imported lazily), with sparse matrix products so it scales.

Comparing every candidate with every train question is quadratic and dense (common n-grams such as
"how", "the " are shared by nearly all questions). Two questions with a cosine of 0.9 or more share
most of their words, rare ones included, so candidate pairs are found through shared rare words
(a sparse product of binary word matrices), then scored exactly on the full character n-gram
TF-IDF vectors. Exact repeats (after normalisation) are always caught.
"""

from __future__ import annotations

BLOCK = 4096
RARE_SHARE = 0.01  # a word in at most 1% of the questions (or 50) is rare enough to pair on
MIN_SHARED_RARE = 2


def leaking(train: list[str], candidates: list[str], threshold: float) -> list[tuple[int, float, int]]:
    """(candidate index, similarity, most similar train index) for each candidate whose best
    cosine similarity to a train question is >= threshold, in candidate order."""
    if not train or not candidates:
        return []
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from datakeg.quality import normalize_question

    from sklearn.feature_extraction.text import CountVectorizer

    train_n = [normalize_question(q) for q in train]
    cand_n = [normalize_question(q) for q in candidates]
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), dtype=np.float32, sublinear_tf=True)
    x = vec.fit_transform(train_n + cand_n).tocsr()
    t, c = x[: len(train_n)], x[len(train_n):]
    # candidate pairs: questions sharing rare words (binary word matrix, sparse product)
    words = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float32)
    w = words.fit_transform(train_n + cand_n).tocsr()
    df = np.asarray(w.sum(axis=0)).ravel()
    rare = np.nonzero(df <= max(50, int(RARE_SHARE * w.shape[0])))[0]
    w = w[:, rare].tocsr()
    t_rare, c_rare = w[: len(train_n)].T.tocsr(), w[len(train_n):]
    need = np.minimum(MIN_SHARED_RARE, np.maximum(1, np.asarray(c_rare.sum(axis=1)).ravel())).astype(np.float32)
    best = np.zeros(len(cand_n), dtype=np.float32)
    arg = np.full(len(cand_n), -1, dtype=np.int64)
    for start in range(0, c.shape[0], BLOCK):
        shared = (c_rare[start:start + BLOCK] @ t_rare).tocoo()
        keep = shared.data >= need[shared.row + start]
        rows, cols = shared.row[keep] + start, shared.col[keep]
        if len(rows) == 0:
            continue
        sims = np.asarray(c[rows].multiply(t[cols]).sum(axis=1)).ravel()
        order = np.lexsort((-sims, rows))  # per row, the best first
        rows, cols, sims = rows[order], cols[order], sims[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        better = sims[first] > best[rows[first]]
        best[rows[first][better]] = sims[first][better]
        arg[rows[first][better]] = cols[first][better]
    exact = {q: i for i, q in enumerate(train_n)}
    for i, q in enumerate(cand_n):
        if q in exact:
            best[i], arg[i] = 1.0, exact[q]
    return [(int(i), float(best[i]), int(arg[i])) for i in np.nonzero(best >= threshold)[0]]


def audit_dir(out, threshold: float, remove: bool = False):
    """Audit OUT's merged files. Returns ([(split, line, question, train question, score)], removed).

    With ``remove``, the leaking rows are taken out of the per-file valid/test files and the
    merged files are rebuilt."""
    import json
    from pathlib import Path

    from datakeg.errors import DatakegError
    from datakeg.records import from_row
    from datakeg.writers import atomic_write_text, merge, per_file_path, per_file_stems

    out = Path(out)
    if not (out / "train.jsonl").exists():
        raise DatakegError(f"{out} has no train.jsonl", "Point it at a datakeg output folder.")

    def questions(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [from_row(json.loads(line)).question for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]

    train = questions(out / "train.jsonl")
    hits, leaked = [], {}
    for split in ("valid", "test"):
        qs = questions(out / f"{split}.jsonl")
        for idx, score, t in leaking(train, qs, threshold):
            hits.append((split, idx + 1, qs[idx], train[t], score))
            leaked.setdefault(split, set()).add(qs[idx])
    removed = 0
    if remove and hits:
        for stem in per_file_stems(out):
            for split, bad in leaked.items():
                path = per_file_path(out, stem, split)
                if not path.exists():
                    continue
                lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
                keep = [l for l in lines if from_row(json.loads(l)).question not in bad]
                removed += len(lines) - len(keep)
                if len(keep) != len(lines):
                    atomic_write_text(path, (l + "\n" for l in keep))
        merge(out)
    return hits, removed
