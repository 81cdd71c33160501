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


class _QuestionReader:
    """The question of each row, whatever its shape (completion, chat, reasoning, alpaca, sharegpt);
    rows it cannot read are collected and reported together by :meth:`check`."""

    def __init__(self):
        self.text_files: dict = {}  # path -> rows of plain {"text"}
        self.bad: list[str] = []

    def question(self, path, lineno: int, value) -> str:
        from datakeg.dataset.records import ShapeError, detect_shape, to_conversation

        shape = detect_shape(value)
        if shape == "text":
            self.text_files[path] = self.text_files.get(path, 0) + 1
            return ""
        try:
            if shape is None:
                raise ShapeError("unknown row shape")
            return to_conversation(value, shape).first_pair().question
        except ShapeError as exc:
            self.bad.append(f"{path.name} line {lineno}: {exc}")
            return ""

    def check(self) -> None:
        from datakeg.errors import ConfigError

        if self.text_files:
            files = ", ".join(f"{p.name} ({n} rows)" for p, n in self.text_files.items())
            raise ConfigError(
                f'cannot audit plain {{"text"}} rows: {files}. The audit compares questions, and rendered '
                "text (a `datakeg convert` output such as chatml) holds none.",
                "Audit the folder it was converted from (rows with a question: completion, chat, reasoning, "
                "alpaca, sharegpt). Nothing was changed.")
        if self.bad:
            more = f" (and {len(self.bad) - 5} more)" if len(self.bad) > 5 else ""
            raise ConfigError(f"cannot audit rows without a question: {'; '.join(self.bad[:5])}{more}",
                              "See `datakeg validate` for every problem. Nothing was changed.")


def audit_dir(out, threshold: float, remove: bool = False, semantic=None) -> tuple[list[AuditHit], int]:
    """Audit a folder of dataset files (any of train/valid/test.jsonl, an empty one included) with the
    same rule as the audit inside `generate` (:func:`datakeg.curation.leakage.find_leaks`): valid vs
    train, test vs train and valid, and repeats inside a split across documents. Documents are told
    apart by their per-file outputs; a folder holding only the merged files is audited across splits
    only. Rows of any shape with a question are read (completion, chat, reasoning, alpaca, sharegpt);
    plain ``{"text"}`` rows hold none: a ``ConfigError`` names the files, before anything is changed.

    With ``remove``, exactly the flagged rows are taken out of the per-file files and the merged
    files are rebuilt; ``removed`` counts them, the only rows any file loses. ``remove`` refuses
    (``ConfigError``, nothing changed) when OUT holds no per-file outputs, since the merged files
    could then not be rebuilt. Every JSONL line is read with ``datakeg.dataset.jsonl``; a line that is not
    valid JSON stops the audit (``JsonlError``) rather than being skipped."""
    from pathlib import Path

    from datakeg.curation.leakage import find_leaks
    import json

    from datakeg.dataset import review_journal
    from datakeg.dataset.jsonl import load_rows, write_lines
    from datakeg.dataset.splits import SPLITS
    from datakeg.dataset.writers import merge, per_file_path, per_file_stems
    from datakeg.errors import ConfigError, DatakegError

    out = Path(out)
    if not any((out / f"{sp}.jsonl").exists() for sp in SPLITS):
        raise DatakegError(f"{out} holds none of train.jsonl, valid.jsonl, test.jsonl",
                           "Point it at a folder of dataset files, such as an output folder of `datakeg generate`.")
    stems = [st for st in per_file_stems(out) if any(per_file_path(out, st, sp).exists() for sp in SPLITS)]
    # items: (split, document, file, row index in file, merged line, question); merged order = stems order
    items = []
    reader = _QuestionReader()
    reviewed = stems and review_journal.journal_path(out).exists()
    if reviewed:
        # the rows the merged files hold: the review's rejections left out, its edits and restored
        # pairs in (restored ones have no per-file row: index None); lines are the merged files'
        merged, _ = review_journal.apply(out, stems)
        order = {st: d for d, st in enumerate(stems)}
        for sp in SPLITS:
            for line, (st, k, raw, _pair, _chunk) in enumerate(merged[sp], 1):
                path = per_file_path(out, st, sp)
                items.append((sp, order[st], path, k, line, reader.question(path, line, json.loads(raw))))
    elif stems:
        for sp in SPLITS:
            line = 0
            for d, st in enumerate(stems):
                path = per_file_path(out, st, sp)
                for k, (lineno, value, _) in enumerate(load_rows(path) if path.exists() else []):
                    line += 1
                    items.append((sp, d, path, k, line, reader.question(path, lineno, value)))
    else:
        for sp in SPLITS:
            path = out / f"{sp}.jsonl"
            for k, (lineno, value, _) in enumerate(load_rows(path) if path.exists() else []):
                items.append((sp, 0, path, k, lineno, reader.question(path, lineno, value)))
    reader.check()
    if remove and not stems:
        raise ConfigError(
            f"{out} holds no per-file outputs (<name>_train.jsonl, <name>_valid.jsonl, <name>_test.jsonl); "
            "--remove takes the leaking rows out of them and rebuilds train.jsonl, valid.jsonl and test.jsonl "
            "from them, so it would empty the merged files.",
            "Nothing was changed. Run without --remove to only report, or point it at an output folder of "
            "`datakeg generate`.")
    # document, split, position (a restored pair after its document's rows, as merge puts it)
    items.sort(key=lambda t: (t[1], SPLITS.index(t[0]), t[3] if t[3] is not None else float("inf"), t[4]))
    leaks = find_leaks([t[5] for t in items], [t[0] for t in items], [t[1] for t in items], threshold,
                       semantic=semantic, duplicates=semantic is not None)
    hits = sorted((AuditHit(items[lk.index][0], items[lk.index][4], items[lk.index][5], items[lk.other][5],
                            items[lk.other][0], lk.score, lk.kind, lk.method) for lk in leaks),
                  key=lambda h: (SPLITS.index(h.split), h.line))
    removed = 0
    if remove and leaks:
        drop: dict[Path, set[int]] = {}
        for lk in leaks:
            if items[lk.index][3] is None:  # a pair the review restored (after its own leakage check):
                continue                     # no per-file row to take out; reject it in the review
            drop.setdefault(items[lk.index][2], set()).add(items[lk.index][3])
        for path, rows_out in drop.items():
            rows = load_rows(path)
            write_lines(path, [raw for k, (_, _, raw) in enumerate(rows) if k not in rows_out])
            removed += len(rows_out)
        merge(out)
    return hits, removed
