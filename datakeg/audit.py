"""Leakage audit: TF-IDF character n-gram cosine similarity of valid/test questions against train
questions (scikit-learn, imported lazily), computed with sparse matrix products in blocks so it
scales to 100k pairs in bounded memory."""

from __future__ import annotations

BLOCK = 2048


def leaking(train: list[str], candidates: list[str], threshold: float) -> list[tuple[int, float, int]]:
    """(candidate index, similarity, most similar train index) for each candidate whose best
    cosine similarity to a train question is >= threshold."""
    if not train or not candidates:
        return []
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from datakeg.quality import normalize_question

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1, max_df=0.5, dtype=np.float32,
                          sublinear_tf=True)
    vec.fit([normalize_question(q) for q in train + candidates])
    t = vec.transform([normalize_question(q) for q in train]).T.tocsr()
    c = vec.transform([normalize_question(q) for q in candidates])
    hits = []
    for start in range(0, c.shape[0], BLOCK):
        sims = (c[start:start + BLOCK] @ t).tocsr()
        best = np.asarray(sims.max(axis=1).todense()).ravel()
        arg = np.asarray(sims.argmax(axis=1)).ravel()
        for row in np.nonzero(best >= threshold)[0]:
            hits.append((start + int(row), float(best[row]), int(arg[row])))
    return hits


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
