"""The `datakeg audit` command: the leakage rule of `generate` (:mod:`datakeg.curation.leakage`, an exact
TF-IDF character n-gram cosine search, plus sentence embeddings with ``--semantic-dedupe``)
applied to an existing output folder."""

from __future__ import annotations

from dataclasses import dataclass

from datakeg.curation.leakage import leaking  # noqa: F401  (the exact pairwise check, kept importable here)


@dataclass(frozen=True)
class AuditHit:
    split: str
    line: int  # line in the merged <split>.jsonl
    question: str
    similar: str  # the kept question it is too close to
    similar_split: str
    score: float
    kind: str  # valid~train, test~train, test~valid, repeat (same split, another document) or
    #            duplicate (same split and document; semantic only)
    method: str = "tfidf"  # or "semantic": found only by --semantic-dedupe's sentence embeddings


def audit_dir(out, threshold: float, remove: bool = False, semantic=None) -> tuple[list[AuditHit], int]:
    """Audit an output folder with the same rule as the audit inside `generate`
    (:func:`datakeg.curation.leakage.find_leaks`): valid vs train, test vs train and valid, and repeats
    inside a split across documents. Documents are told apart by their per-file outputs; a folder
    holding only the merged files is audited across splits only.

    With ``remove``, exactly the flagged rows are taken out of the per-file files and the merged
    files are rebuilt; ``removed`` counts them, the only rows any file loses. ``remove`` refuses
    (``ConfigError``, nothing changed) when OUT holds no per-file outputs, since the merged files
    could then not be rebuilt. Every JSONL line is read with ``datakeg.dataset.jsonl``; a line that is not
    valid JSON stops the audit (``JsonlError``) rather than being skipped."""
    from pathlib import Path

    from datakeg.curation.leakage import find_leaks
    from datakeg.dataset.jsonl import load_rows, write_lines
    from datakeg.dataset.records import from_row
    from datakeg.dataset.splits import SPLITS
    from datakeg.dataset.writers import merge, per_file_path, per_file_stems
    from datakeg.errors import ConfigError, DatakegError

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
    leaks = find_leaks([t[5] for t in items], [t[0] for t in items], [t[1] for t in items], threshold,
                       semantic=semantic, duplicates=semantic is not None)
    hits = sorted((AuditHit(items[lk.index][0], items[lk.index][4], items[lk.index][5], items[lk.other][5],
                            items[lk.other][0], lk.score, lk.kind, lk.method) for lk in leaks),
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
