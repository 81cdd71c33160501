"""The public Python API. The CLI calls exactly these functions.

    import datakeg
    result = datakeg.generate("docs", "out", provider="openai", base_url="http://localhost:8000/v1",
                              model="qwen2.5-7b-instruct", pairs_per_1k=2)
    print(result.delivered, result.shortfall)

Every function raises :mod:`datakeg.errors` exceptions (each with a ``hint`` saying what to do and an
``exit_code`` the CLI uses) and never prints; progress goes to a :class:`datakeg.Callbacks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datakeg.dataset.splits import SPLITS
from datakeg.errors import ConfigError, DatakegError
from datakeg.generation.callbacks import Callbacks, RecordingCallbacks
from datakeg.settings import Settings


@dataclass
class Result:
    """What a generate run delivered. ``manifest`` is the dict written to ``OUT/manifest.json``."""

    out: Path
    manifest: dict
    mode: str  # "new", "resume" or "fresh"

    @property
    def delivered(self) -> dict[str, int]:
        return dict(self.manifest["totals"]["delivered"])

    @property
    def target(self) -> dict[str, int]:
        return dict(self.manifest["totals"]["target"])

    @property
    def shortfall(self) -> dict[str, int]:
        return dict(self.manifest["totals"]["shortfall"])

    @property
    def chunks_short_because_of_errors(self) -> int:
        return self.manifest["totals"]["chunks_short_because_of_errors"]

    @property
    def nothing_delivered(self) -> bool:
        """The run finished without a single pair (manifest status ``nothing_delivered``)."""
        return self.manifest.get("status") == "nothing_delivered"


@dataclass
class DryRun:
    """What ``--dry-run`` shows: the plan and its request/token estimate (no model calls)."""

    plan: object  # datakeg.generation.planning.Plan
    estimate: dict

    @property
    def skipped(self) -> list:
        return self.plan.skipped

    @property
    def warnings(self) -> list[str]:
        return self.plan.warnings


def _check_paths(src: Path, out: Path | None) -> None:
    if not src.exists():
        raise ConfigError(f"{src} does not exist", "Point SRC at your documentation folder or file.")
    if out is None:
        return
    s, o = src.resolve(), out.resolve()
    if s == o:
        raise ConfigError(f"SRC and OUT are the same folder ({src})",
                          "Write the dataset to its own folder, e.g. `datakeg generate docs out`.")
    if o in s.parents:
        raise ConfigError(f"SRC ({src}) lies inside OUT ({out})",
                          "OUT is datakeg's to write (--fresh may clear it); choose an OUT outside your documents.")
    if o.exists() and not o.is_dir():
        raise ConfigError(f"OUT ({out}) is a file, not a folder", "Choose a folder for the output.")


def _read(src: Path, out: Path | None, settings: Settings):
    from datakeg.sources.discovery import read_documents

    docs, skipped = read_documents(src, out, max_bytes=int(settings.max_file_mb * 1024 * 1024))
    if not docs:
        raise DatakegError(f"no readable .md or .txt files under {src}",
                           "Point SRC at your documentation folder (hidden folders are skipped)."
                           + (f" Skipped: {'; '.join(f'{s.relpath}: {s.reason}' for s in skipped[:5])}"
                              if skipped else ""))
    return docs, skipped


def plan(src, out=None, **settings) -> DryRun:
    """Chunks, targets, requests and a token estimate per file, without any model call."""
    from datakeg.generation.planning import estimate, make_plan

    s = Settings.build(**settings)
    task, s = _task(s)
    src = Path(src)
    _check_paths(src, Path(out) if out is not None else None)
    docs, skipped = _read(src, Path(out) if out is not None else None, s)
    p = make_plan(docs, skipped, s, task)
    return DryRun(p, estimate(p, s, task))


def _task(s: Settings):
    """The run's task (``--task``) and the settings for it: a bad task file stops the run before
    any request (ConfigError, exit 2); a multi-turn task writes chat rows (``--format chat``)."""
    from dataclasses import replace
    from datakeg.generation.task import load_task

    task = load_task(s.task)
    if task.turns > 1 and s.reasoning:
        raise ConfigError(f"task {task.name!r} writes conversations of {task.turns} turns; --format reasoning holds "
                          "one question and answer.", "Use --format chat (multi-turn rows are written as messages).")
    if task.turns > 1 and s.paraphrases:
        raise ConfigError("--paraphrases rewords single questions; it does not work with a multi-turn task.",
                          "Drop --paraphrases, or use a task with turns = 1.")
    if task.turns > 1 and s.format != "chat":
        s = replace(s, format="chat")  # only {"messages"} rows hold several turns
    return task, s


def generate(src, out, *, provider: str = "ollama", model: str | None = None, base_url: str | list[str] | None = None,
             concurrency: int | None = None, fresh: bool = False, resume: bool = False, refill: bool = False,
             callbacks: Callbacks | None = None, **settings) -> Result:
    """Generate train/valid/test pairs from the .md/.txt files under ``src`` into ``out``.

    ``base_url`` may list several servers of the same model: each gets ``concurrency`` requests in
    flight, requests go to the least busy healthy one, and a failing one is drained while its work
    is retried on the others.

    Does everything `datakeg generate` does: checks the provider (waiting ``wait_for_model``
    seconds for one that is starting), locks OUT against a second writer, compares the run's
    fingerprint with the run recorded in OUT (same: resume; different: refuse unless ``resume``
    or ``fresh``), replays finished requests from the journal, runs the leakage audit, writes
    per-file outputs, merged files, ``rejects.jsonl`` and ``manifest.json``.

    ``refill``: in an OUT that holds a run, the pairs rejected in ``datakeg review`` are replaced:
    their chunk asks the model again for that many, avoiding the rejected questions (not part of the
    run's fingerprint: OUT stays the same run; the journaled requests replay, only new ones are sent).
    """
    from datakeg.dataset.outdir import (
        OutputLock,
        prepare_out,
        refuse_foreign,
        remove_stale_temp_files,
    )
    from datakeg.generation.calls import Limits
    from datakeg.generation.pipeline import Generator
    from datakeg.generation.planning import make_plan
    from datakeg.generation.task import load_task
    from datakeg.providers import create_provider

    cb = RecordingCallbacks(callbacks)  # its warnings go into the manifest
    if resume and fresh:
        raise ConfigError("--resume and --fresh contradict each other; pass one of them.")
    if refill and fresh:
        raise ConfigError("--refill replaces rejected pairs of the run in OUT; --fresh forgets that run.",
                          "Pass one of them.")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= 1024):
        raise ConfigError(f"--concurrency must be a whole number from 1 to 1024, got {concurrency!r}.")
    s = Settings.build(**settings)
    task, s = _task(s)
    src, out = Path(src), Path(out)
    _check_paths(src, out)
    docs, skipped = _read(src, out, s)
    the_plan = make_plan(docs, skipped, s, task)
    urls = list(base_url) if isinstance(base_url, (list, tuple)) else [base_url]
    if not urls:
        urls = [None]
    if len({u.rstrip("/") if isinstance(u, str) else u for u in urls}) != len(urls):
        raise ConfigError("the same --base-url is given twice", "Give each model server once.")
    if provider == "local" and s.held_out == "taught":
        # the offline model's few-shot prompt carries no list of facts to ask about: every held-out
        # pair would be dropped as untaught and asked again until --max-attempts
        raise ConfigError("the offline model (--provider local) cannot follow --held-out taught: it writes pairs from "
                          "a few-shot prompt of its own, without the list of train answers to ask about.",
                          "Use an instruct model (Ollama, an OpenAI-compatible server, OpenRouter), or leave out "
                          "--held-out taught.")
    if provider == "local" and task.sha256 != load_task().sha256:
        # the offline base model cannot follow instructions: it writes pairs from few-shot examples
        if task.turns > 1 or task.kinds:
            raise ConfigError(f"the offline model (--provider local) cannot follow task {task.name!r}: it writes "
                              "single question-answer pairs from a few-shot prompt of its own, without kinds or turns.",
                              "Use an instruct model (Ollama, an OpenAI-compatible server, OpenRouter) for this task.")
        cb.on_warning(f"the offline model (--provider local) ignores the instructions of task {task.name!r}")
    provs = [create_provider(provider, model=model, base_url=u, timeout=s.request_timeout,
                             structured=s.structured, max_retries=s.max_retries) for u in urls]
    for p in provs:  # a format the server refuses, a --model it does not list: said once, never printed here
        p.on_notice = cb.on_warning
    try:
        provs = _ready_endpoints(provs, s.wait_for_model, cb)  # before any work: says what to run when unavailable
        prov = provs[0]
        from datakeg.generation.judge import judge_provider

        judge = judge_provider(s, prov, cb)  # checked before any work too
        if judge is not None:
            provs.append(judge)  # closed with the others
        semantic = None
        if s.semantic_dedupe:
            from datakeg.curation.semantic import SemanticModel

            semantic = SemanticModel(s.semantic_model, s.semantic_threshold)
            semantic.check()  # loads it: a missing extra or a bad folder stops the run before any work
        # the task by its content (a copy elsewhere is the same run; a changed word is another)
        # (the default task is left out: folders written before task files existed still resume)
        fingerprint = {**prov.fingerprint(), "settings": s.shaping()}
        if task.sha256 != load_task().sha256:
            fingerprint["task"] = task.identity()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatakegError(f"cannot create {out}: {exc.strerror or exc}",
                               "Choose an output folder you can write to.") from None
        refuse_foreign(out)  # before the lock writes anything into it
        with OutputLock(out):
            if refill and not (out / ".datakeg" / "run.json").exists():  # outdir.STATE_DIR / RUN_FILE
                raise ConfigError(f"--refill: {out} holds no datakeg run whose rejected pairs could be replaced.",
                                  f"Run `datakeg generate SRC {out}` and `datakeg review {out}` first.")
            mode = prepare_out(out, fingerprint, fresh=fresh, resume=resume)
            remove_stale_temp_files(out)
            for doc in docs:
                if doc.encoding != "utf-8":
                    cb.on_warning(f"{doc.relpath}: not UTF-8; decoded as {doc.encoding}")
            prov.prepare(lambda message: cb.on_message(f"{prov.name}: {message}"))
            gen = Generator([p for p in provs if p is not judge], s, out, cb,
                            concurrency=concurrency or prov.default_concurrency,
                            limits=Limits(s.max_requests, s.max_tokens, s.max_cost), judge=judge,
                            semantic=semantic, task=task, refill=refill)
            if mode == "resume" and len(gen.journal):
                cb.on_message(f"resuming: {len(gen.journal)} finished request(s) in {out} will be reused")
            run = gen.run(the_plan, src)
    finally:
        for p in provs:
            p.close()
    return Result(out, run.manifest, mode)


def _ready_endpoints(provs: list, wait: float, cb: Callbacks) -> list:
    """The endpoints that answer. With several, one that is down is left out with a warning (the
    run goes on with the others); all must serve the same model."""
    from datakeg.errors import ProviderUnavailable

    ready, last = [], None
    for p in provs:
        try:
            p.wait_ready(wait, cb.on_message)
            ready.append(p)
        except ProviderUnavailable as exc:
            if len(provs) == 1:
                raise
            last = exc
            cb.on_warning(f"leaving out an endpoint: {exc.message}")
    if not ready:
        raise last
    models = sorted({str(p.model) for p in ready})
    if len(models) > 1:
        raise ConfigError(f"the --base-url servers serve different models ({', '.join(models)})",
                          "Pass --model so that every server runs the same one.")
    return ready


def convert(src, dst, template: str | None = None, *, custom_template=None, source_format: str | None = None,
            system_message: str | None = None, force: bool = False, tokenizer: str | None = None,
            binary: bool = False, on_message=None) -> list:
    """Convert a dataset file (or a folder's train/valid/test.jsonl) to a trainer's format.
    Returns one ConvertReport per file (rows written, detected shape, skipped lines, notes).

    A folder DST is written atomically (built beside it, then renamed into place: a failed
    conversion leaves DST as it was) and recorded as convert's (``DST/.datakeg/convert.json``); a
    non-empty DST that convert did not write is refused unless ``force`` (then the files convert
    writes replace those of the same names, and nothing else in DST is touched). An empty input file
    (a split that got no pairs) gives an empty output file.

    With ``binary`` (and ``tokenizer``), DST is a folder of pre-tokenized files for nanoGPT-style
    trainers (see :mod:`datakeg.training.pretokenize`)."""
    from datakeg.dataset.conversion import TARGETS, convert_file, custom_target

    src, dst = Path(src), Path(dst)
    if custom_template:
        target = custom_target(Path(custom_template))
    elif template in TARGETS:
        target = TARGETS[template]
    else:
        raise ConfigError(f"unknown or missing --template {template!r}" if template else
                          "--template (or --custom-template) is required",
                          f"Choose one of: {', '.join(TARGETS)} (details: datakeg convert -l).")
    if binary or tokenizer:
        if not (binary and tokenizer):
            raise ConfigError("--bin and --tokenizer go together", "Pass both: --tokenizer T --bin.")
        if target.name != "chatml":
            raise ConfigError(f"--bin writes ChatML token files; --template {target.name} is not supported",
                              "Use --template chatml.")
    folder = src.is_dir() or binary
    if src.is_dir():
        jobs = [(src / f"{s}.jsonl", f"{s}.jsonl") for s in SPLITS if (src / f"{s}.jsonl").exists()]
        if not jobs:
            raise DatakegError(f"{src} holds no train.jsonl, valid.jsonl or test.jsonl",
                               "Point SRC at a datakeg output folder or at one file.")
    else:
        jobs = [(src, src.name if binary else dst.name)]
    if folder:
        _check_convert_dst(src, dst, force)
    if binary:
        from datakeg.training.pretokenize import pretokenize

        return pretokenize([s for s, _ in jobs], dst, tokenizer, target, source_format=source_format,
                           system_message=system_message, on_message=on_message)
    if not folder:
        report = convert_file(src, dst, target, source_format, system_message)
        report.src, report.dst, report.target = src, dst, target.name
        return [report]
    import json

    from datakeg.dataset.atomic import AtomicFolder, atomic_write_text
    from datakeg.dataset.outdir import CONVERT_FILE, STATE_DIR, convert_outputs

    reports = []
    with AtomicFolder(dst, superseded=convert_outputs(dst)) as tmp:
        for s, name in jobs:
            report = convert_file(s, tmp / name, target, source_format, system_message)
            report.src, report.dst, report.target = s, dst / name, target.name
            reports.append(report)
        record = {"command": "convert", "source": str(src), "template": target.name,
                  "rows": {name: r.rows for (_, name), r in zip(jobs, reports)}, "outputs": [n for _, n in jobs]}
        atomic_write_text(tmp / STATE_DIR / CONVERT_FILE, [json.dumps(record, indent=2) + "\n"])
    return reports


def _check_convert_dst(src: Path, dst: Path, force: bool) -> None:
    """DST must be new, empty or an earlier convert output (or ``force``), and never SRC itself."""
    from datakeg.dataset.outdir import CONVERT_FILE, STATE_DIR, refuse_foreign

    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst} is a file; converting a folder (or with --bin) writes a folder.",
                          "Choose a folder name for DST.")
    if src.is_dir() and dst.exists() and src.resolve() == dst.resolve():
        raise ConfigError("DST is SRC: convert would overwrite its own input.", "Choose another DST folder.")
    if not force:
        refuse_foreign(dst, marks=(f"{STATE_DIR}/{CONVERT_FILE}",),
                       hint="Choose a new or empty folder, or pass --force to replace the files convert writes "
                            "there (train.jsonl, valid.jsonl, test.jsonl; nothing else is touched).")


@dataclass
class Validation:
    files: list  # datakeg.curation.validation.FileReport per file
    cross_split: list  # (split, line, question, similar train question) for an output folder
    is_output: bool
    text_rows: bool = False  # some files hold plain {"text"} rows: only identical rows are compared across splits
    missing: list = field(default_factory=list)  # with require_all_splits: splits with no file

    @property
    def problems(self) -> int:
        return sum(len(f.problems) for f in self.files) + len(self.cross_split) + len(self.missing)

    @property
    def ok(self) -> bool:
        return self.problems == 0


def validate(target, *, dedupe_threshold: float = 90.0, require_all_splits: bool = False) -> Validation:
    """Check every line of a dataset file, or of train/valid/test.jsonl in a folder. An empty file
    (a split that got no pairs) is reported as empty, not as a problem, unless ``require_all_splits``
    (then a folder must also hold all three splits)."""
    from datakeg.curation.validation import (
        cross_split_duplicates,
        dataset_files,
        text_rows,
        validate_file,
    )

    target = Path(target)
    files, is_output = dataset_files(target)
    if not files:
        raise DatakegError(f"no .jsonl files under {target}")
    reports = [validate_file(p, require_rows=require_all_splits) for p in files]
    dups = cross_split_duplicates(target, dedupe_threshold) if is_output else []
    missing = ([s for s in SPLITS if not (target / f"{s}.jsonl").exists()]
               if require_all_splits and target.is_dir() else [])
    return Validation(reports, dups, is_output, text_rows(files) if is_output else False, missing)


def _refresh_card(out: Path, on_warning) -> None:
    """Rewrite OUT/README.md (the dataset card) after the merged files changed, and the manifest's
    taught share (:mod:`datakeg.curation.taught`) first, so both describe the new rows."""
    from datakeg.curation.taught import refresh_taught
    from datakeg.dataset.card import write_card

    refresh_taught(out)
    note = write_card(out)
    if note and on_warning is not None:
        on_warning(note)


def audit(out, *, leakage_threshold: float = 0.9, remove: bool = False, on_warning=None,
          semantic_dedupe: bool = False, semantic_model: str | None = None, semantic_threshold: float = 0.85):
    """Leakage audit of an output folder. Returns (hits, removed); ``remove`` takes the leaking
    pairs out of the per-file files and rebuilds the merged files and the dataset card (holding
    OUT's lock). ``on_warning(message)`` hears when the card could not be rewritten.
    ``semantic_dedupe`` adds sentence-embedding near-duplicates, as ``generate --semantic-dedupe``
    (inside a document's split too, kind "duplicate")."""
    import functools

    from datakeg.curation.audit import audit_dir

    if semantic_model and not semantic_dedupe:
        raise ConfigError("--semantic-model needs --semantic-dedupe.", "Add --semantic-dedupe.")
    if semantic_dedupe:
        from datakeg.curation.semantic import SemanticModel

        model = SemanticModel(semantic_model, semantic_threshold)
        model.check()
        audit_dir = functools.partial(audit_dir, semantic=model)

    if remove:
        from datakeg.dataset.outdir import OutputLock
        from datakeg.dataset.writers import has_per_file_outputs

        if not has_per_file_outputs(Path(out)):
            return audit_dir(Path(out), leakage_threshold, remove=True)  # refuses, writing nothing (no lock needed)
        with OutputLock(Path(out), "audit --remove"):
            result = audit_dir(Path(out), leakage_threshold, remove=True)
            _refresh_card(Path(out), on_warning)
            return result
    return audit_dir(Path(out), leakage_threshold, remove=False)


def merge(out, *, on_warning=None) -> dict[str, int]:
    """Rebuild OUT/train.jsonl, valid.jsonl, test.jsonl from the per-file outputs, and the dataset
    card OUT/README.md (holding OUT's lock). ``on_warning(message)`` hears when the card was left
    alone (a README.md datakeg did not write, or one edited outside its user regions)."""
    from datakeg.dataset.outdir import OutputLock
    from datakeg.dataset.writers import has_per_file_outputs
    from datakeg.dataset.writers import merge as do_merge

    if not has_per_file_outputs(Path(out)):
        return do_merge(Path(out))  # refuses (nothing to merge from), writing nothing: no lock needed
    with OutputLock(Path(out), "merge"):
        counts = do_merge(Path(out))
        _refresh_card(Path(out), on_warning)
        return counts
