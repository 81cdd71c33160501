"""Leakage audit: TF-IDF character n-gram cosine similarity of valid/test questions against train
questions (scikit-learn, imported lazily), with sparse matrix products so it scales.

Comparing every candidate with every train question is quadratic and dense (common n-grams such as
"how", "the " are shared by nearly all questions). Two questions with a cosine of 0.9 or more share
most of their words, rare ones included, so candidate pairs are found through shared rare words
(a sparse product of binary word matrices), then scored exactly on the full character n-gram
TF-IDF vectors. Exact repeats (after normalisation) are always caught.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class AuditHit:
    split: str
    line: int  # line in the merged <split>.jsonl
    question: str
    similar: str  # the kept question it is too close to
    similar_split: str
    score: float
    kind: str  # valid~train, test~train, test~valid or repeat (same split, another document)


def audit_dir(out, threshold: float, remove: bool = False) -> tuple[list[AuditHit], int]:
    """Audit an output folder with the same rule as the audit inside `generate`
    (:func:`datakeg.leakage.find_leaks`): valid vs train, test vs train and valid, and repeats
    inside a split across documents. Documents are told apart by their per-file outputs; a folder
    holding only the merged files is audited across splits only.

    With ``remove``, exactly the flagged rows are taken out of the per-file files and the merged
    files are rebuilt; ``removed`` counts them, the only rows any file loses. ``remove`` refuses
    (``ConfigError``, nothing changed) when OUT holds no per-file outputs, since the merged files
    could then not be rebuilt. Every JSONL line is read with ``datakeg.jsonl``; a line that is not
    valid JSON stops the audit (``JsonlError``) rather than being skipped."""
    from pathlib import Path

    from datakeg.errors import ConfigError, DatakegError
    from datakeg.jsonl import load_rows, write_lines
    from datakeg.leakage import find_leaks
    from datakeg.records import from_row
    from datakeg.writers import SPLITS, merge, per_file_path, per_file_stems

    out = Path(out)
    if not (out / "train.jsonl").exists():
        raise DatakegError(f"{out} has no train.jsonl", "Point it at a datakeg output folder.")
    stems = [st for st in per_file_stems(out) if any(per_file_path(out, st, sp).exists() for sp in SPLITS)]
    if remove and not stems:
        raise ConfigError(
            f"{out} holds no per-file outputs (<name>_train.jsonl, <name>_valid.jsonl, <name>_test.jsonl); "
            "--remove takes the leaking rows out of them and rebuilds train.jsonl, valid.jsonl and test.jsonl "
            "from them, so it would empty the merged files.",
            "Nothing was changed. Run without --remove to only report, or point it at an output folder of "
            "`datakeg generate`.")
    # items: (split, document, file, row index in file, merged line, question); merged order = stems order
    items = []
    if stems:
        for sp in SPLITS:
            line = 0
            for d, st in enumerate(stems):
                path = per_file_path(out, st, sp)
                for k, (_, value, _) in enumerate(load_rows(path) if path.exists() else []):
                    line += 1
                    items.append((sp, d, path, k, line, from_row(value).question))
    else:
        for sp in SPLITS:
            path = out / f"{sp}.jsonl"
            for k, (lineno, value, _) in enumerate(load_rows(path) if path.exists() else []):
                items.append((sp, 0, path, k, lineno, from_row(value).question))
    items.sort(key=lambda t: (t[1], SPLITS.index(t[0]), t[3]))  # document, split, position
    leaks = find_leaks([t[5] for t in items], [t[0] for t in items], [t[1] for t in items], threshold)
    hits = sorted((AuditHit(items[lk.index][0], items[lk.index][4], items[lk.index][5], items[lk.other][5],
                            items[lk.other][0], lk.score, lk.kind) for lk in leaks),
                  key=lambda h: (SPLITS.index(h.split), h.line))
    removed = 0
    if remove and leaks:
        drop: dict[Path, set[int]] = {}
        for lk in leaks:
            drop.setdefault(items[lk.index][2], set()).add(items[lk.index][3])
        for path, rows_out in drop.items():
            rows = load_rows(path)
            write_lines(path, [raw for k, (_, _, raw) in enumerate(rows) if k not in rows_out])
            removed += len(rows_out)
        merge(out)
    return hits, removed
