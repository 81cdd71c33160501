"""Placeholder: replaced by the exact engine (helper branch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Leak:
    index: int
    other: int
    score: float
    kind: str


def find_leaks(questions, splits, docs, threshold):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from datakeg.quality import normalize_question

    if not questions:
        return []
    order = {"train": 0, "valid": 1, "test": 2}
    norm = [normalize_question(q) for q in questions]
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit_transform(norm)
    sims = (x @ x.T).toarray()
    prio = sorted(range(len(questions)), key=lambda i: (order[splits[i]], i))
    kept, leaks = [], []
    for i in prio:
        hit = None
        for j in kept:
            if (order[splits[j]] < order[splits[i]] or docs[j] != docs[i]) and (sims[i, j] >= threshold - 1e-6 or (norm[i] == norm[j] and threshold <= 1)):
                hit = j
                break
        if hit is None:
            kept.append(i)
        else:
            kind = "repeat" if splits[i] == splits[hit] else f"{splits[i]}~{splits[hit]}"
            leaks.append(Leak(i, hit, float(sims[i, hit]), kind))
    return sorted(leaks, key=lambda l: l.index)
