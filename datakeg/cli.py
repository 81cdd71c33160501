"""Command-line interface: parse, wire, print. No pipeline logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from datakeg import __version__
from datakeg.errors import DatakegError
from datakeg.providers import DESCRIPTIONS, PROVIDERS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(exc: DatakegError) -> None:
    click.echo(f"Error: {exc.message}", err=True)
    if exc.hint:
        click.echo(exc.hint, err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="datakeg")
def cli():
    """datakeg: turn a folder of Markdown/TXT documentation into question-answer datasets
    (train/valid/test JSONL, no leakage between splits) for fine-tuning a documentation expert.

    \b
    Quick start (no server needed, uses the bundled offline model):
      datakeg generate testdoc out --provider local --pairs-per-1k 5
    With Ollama (the default provider):
      ollama pull qwen2.5:3b && datakeg generate ./docs ./out
    """


# --------------------------------------------------------------------------- progress output
class _LineReporter:
    """Plain line-based progress for logs and pipes."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.n = 0
        self.total = 0
        self.index: dict[str, int] = {}

    def echo(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def on_plan(self, plan):
        self.total = len(plan.docs)
        self.echo(f"{len(plan.docs)} file(s), {plan.chunks} chunk(s), {plan.pairs} pair(s) targeted")

    def on_document_start(self, dp):
        self.n += 1
        self.index[dp.doc.relpath] = self.n  # documents run in parallel: keep each one's number
        self.echo(f"[{self.n}/{self.total}] {dp.doc.relpath}: {len(dp.chunks)} chunk(s), {dp.total} pair(s) targeted")

    def on_chunk_done(self, dp, chunk, accepted): ...
    def on_request(self, prompt_tokens, completion_tokens): ...
    def on_pairs(self, accepted): ...

    def on_document_done(self, dp, delivered):
        got = ", ".join(f"{k} {v}/{dp.by_split[k]}" for k, v in delivered.items())
        self.echo(f"[{self.index.get(dp.doc.relpath, self.n)}/{self.total}] {dp.doc.relpath}: done ({got})")

    def on_warning(self, message):
        self.echo(f"warning: {message}")

    def close(self): ...


class _RichReporter(_LineReporter):
    """A rich progress bar on stderr (files, chunks, pairs) for interactive terminals."""

    def __init__(self):
        super().__init__(quiet=False)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
        )
        self.tasks = {}

    def echo(self, msg):
        self.progress.console.print(msg, markup=False, highlight=False)

    def on_plan(self, plan):
        self.progress.start()
        self.tasks = {
            "files": self.progress.add_task("files", total=len(plan.docs), info=""),
            "chunks": self.progress.add_task("chunks", total=plan.chunks, info=""),
            "pairs": self.progress.add_task("pairs", total=plan.pairs, info=""),
        }

    def on_document_start(self, dp):
        self.n += 1
        self.progress.update(self.tasks["files"], info=dp.doc.relpath)

    def on_chunk_done(self, dp, chunk, accepted):
        self.progress.advance(self.tasks["chunks"])

    def on_request(self, prompt_tokens, completion_tokens):
        t = self.progress.tasks[self.tasks["pairs"]]
        used = t.fields.get("tokens", 0) + prompt_tokens + completion_tokens
        self.progress.update(self.tasks["pairs"], tokens=used, info=f"{used:,} tokens")

    def on_pairs(self, accepted):
        self.progress.advance(self.tasks["pairs"], accepted)

    def on_document_done(self, dp, delivered):
        self.progress.advance(self.tasks["files"])

    def close(self):
        self.progress.stop()


def _reporter(quiet: bool):
    from datakeg.pipeline import Callbacks

    base = _RichReporter if (not quiet and sys.stderr.isatty()) else _LineReporter
    cls = type("Reporter", (base, Callbacks), {})
    return cls() if base is _RichReporter else cls(quiet)


_SECRET_KEYS = ("api_key", "apikey", "key", "token", "secret", "password", "openai_api_key", "openrouter_api_key")


def _load_config(ctx, _param, path):
    """--config FILE: TOML keys become defaults for the options (flags still win)."""
    if path is None:
        return
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    names = {p.name for p in ctx.command.params if isinstance(p, click.Option)} - {"config"}
    defaults = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        name = "fmt" if name == "format" else name
        if name.lower() in _SECRET_KEYS or name.lower().endswith(("_key", "_token", "_secret")):
            raise click.BadParameter(f"{key!r} looks like a secret; keys never go in the config file. Use the "
                                     "environment (OPENROUTER_API_KEY, OPENAI_API_KEY).", param_hint="--config")
        if name not in names or name in ("dry_run", "fresh", "resume"):
            raise click.BadParameter(f"unknown key {key!r} in {path}", param_hint="--config")
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


# --------------------------------------------------------------------------- generate
@cli.command(context_settings=CONTEXT)
@click.argument("src", type=click.Path(exists=True, file_okay=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("-p", "--provider", type=click.Choice(PROVIDERS), default="ollama", show_default=True,
              help="Where the model runs: " + "; ".join(f"{k} = {v}" for k, v in DESCRIPTIONS.items()) + ".")
@click.option("-m", "--model", help="Model name. Defaults: ollama qwen2.5:3b; openai the server's only "
              "model; local Gemma 3 270M (or a local path / HF id); openrouter has none (required).")
@click.option("--base-url", help="Server URL: OpenAI-compatible base URL (e.g. http://localhost:8000/v1) "
              "or the Ollama host (default: $OLLAMA_HOST or http://localhost:11434).")
@click.option("-f", "--format", "fmt", type=click.Choice(["completion", "chat", "reasoning"]),
              default="completion", show_default=True,
              help='Row shape: completion {"prompt","completion"}; chat {"messages":[...]}; reasoning '
              '(see --reasoning-format).')
@click.option("--reasoning-format", type=click.Choice(["separate", "integrated"]), default="separate",
              show_default=True, help='For --format reasoning: separate {"question","reasoning","answer"} or '
              'integrated {"prompt","completion"} with <think>reasoning</think> before the answer.')
@click.option("--system-message", help="System turn added to every row with --format chat.")
@click.option("--chunk-size", type=int, default=4000, show_default=True,
              help="Maximum characters per chunk (a code block, table or list item is never cut).")
@click.option("--pairs-per-1k", type=float, default=10.0, show_default=True,
              help="Pairs per 1000 characters of each document (at least 1 per document).")
@click.option("--train-pct", type=float, default=0.6, show_default=True, help="Share of pairs for train.")
@click.option("--valid-pct", type=float, default=0.2, show_default=True, help="Share of pairs for valid.")
@click.option("--test-pct", type=float, default=0.2, show_default=True,
              help="Share of pairs for test. The three shares must sum to 1.")
@click.option("--dedupe-threshold", type=float, default=90.0, show_default=True,
              help="Drop a question this similar (0-100, rapidfuzz) to any accepted one in the document.")
@click.option("--grounding-threshold", type=float, default=0.5, show_default=True,
              help="Drop an answer unless this share of its content words occurs in the chunk (0 = off).")
@click.option("--no-grounding", is_flag=True, help="Switch the grounding check off (e.g. when --language "
              "translates the documentation).")
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="Extra requests per chunk and split when the model returns fewer usable pairs than asked.")
@click.option("--batch-size", type=int, default=15, show_default=True,
              help="Most pairs asked for in one request.")
@click.option("--language", help="Language of the pairs, e.g. German. Default: the language each "
              "document is written in (detected).")
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--seed", type=int, help="Sampling seed passed to the model, where supported.")
@click.option("--structured", type=click.Choice(["auto", "schema", "json", "none"]), default="auto",
              show_default=True, help="Structured output: a JSON schema, plain JSON mode, or none. auto uses "
              "the schema and steps down if the server rejects it.")
@click.option("--request-timeout", type=float, default=300.0, show_default=True, help="Seconds per request.")
@click.option("--max-retries", type=int, default=4, show_default=True,
              help="Retries per request on timeouts, connection errors, 429 and 5xx (exponential backoff with "
              "jitter; Retry-After honoured).")
@click.option("--wait-for-model", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Wait this long for a server that is still starting before giving up.")
@click.option("-c", "--concurrency", type=int, help="Chunks in flight at once. Default: 4 for remote "
              "providers, 2 for Ollama, 1 for the offline model. Outputs are identical whatever the value.")
@click.option("--max-requests", type=int, help="Hard stop after this many model requests (resumable).")
@click.option("--max-tokens", type=int, help="Hard stop after this many prompt + completion tokens (resumable).")
@click.option("--max-cost", type=float, help="Hard stop at this cost in USD, from OpenRouter's reported "
              "usage cost (resumable).")
@click.option("--leakage-threshold", type=float, default=0.9, show_default=True,
              help="After generation, remove valid/test pairs whose question has a TF-IDF (char n-gram) cosine "
              "similarity this high to any train question.")
@click.option("--no-audit", is_flag=True, help="Skip the leakage audit.")
@click.option("--max-file-mb", type=float, default=20.0, show_default=True,
              help="Skip (and report) source files larger than this.")
@click.option("--resume", is_flag=True, help="Reuse OUT even when its run had different settings (only the "
              "requests that still match are reused). A rerun with the same settings resumes by itself.")
@click.option("--fresh", is_flag=True, help="Forget the run recorded in OUT and start over.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=_load_config,
              help="TOML file with any of these options (flags override it). See `datakeg init-config`.")
@click.option("--dry-run", is_flag=True, help="Make no model calls: show chunks, targets, requests and a "
              "token estimate per file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (errors are still shown).")
def generate(src, out, provider, model, base_url, fmt, reasoning_format, system_message, chunk_size,
             pairs_per_1k, train_pct, valid_pct, test_pct, dedupe_threshold, grounding_threshold, no_grounding,
             max_attempts, batch_size, language, temperature, seed, structured, request_timeout, max_retries,
             wait_for_model, concurrency, max_requests, max_tokens, max_cost, leakage_threshold, no_audit,
             max_file_mb, resume, fresh, dry_run, quiet):
    """Generate train/valid/test question-answer pairs from the .md/.txt files under SRC into OUT.

    \b
    Writes, mirroring SRC's folders:
      OUT/<path>_train.jsonl, _valid.jsonl, _test.jsonl   per source file
      OUT/train.jsonl, valid.jsonl, test.jsonl           all files merged
      OUT/manifest.json                                  settings, targets vs delivered, drops, usage
      OUT/rejects.jsonl                                  unparseable replies, failed requests, dropped pairs

    \b
    Examples:
      datakeg generate ./docs ./out                                   # Ollama, qwen2.5:3b
      datakeg generate ./docs ./out -m llama3.2:3b --format chat --system-message "You are a docs expert."
      datakeg generate ./docs ./out -p openai --base-url http://localhost:8000/v1
      OPENROUTER_API_KEY=... datakeg generate ./docs ./out -p openrouter -m qwen/qwen-2.5-7b-instruct
      datakeg generate ./docs ./out -p local --pairs-per-1k 2           # offline demo model, no server
      datakeg generate ./docs ./out --dry-run                           # estimate first
    """
    from datakeg.discovery import read_documents
    from datakeg.journal import prepare_out
    from datakeg.pipeline import Generator, Limits, Settings, estimate, make_plan
    from datakeg.providers import create_provider
    from datakeg.targets import Ratios

    if resume and fresh:
        _fail(DatakegError("--resume and --fresh contradict each other; pass one of them."))
    try:
        settings = Settings(
            format=fmt, reasoning_format=reasoning_format, system_message=system_message, chunk_size=chunk_size,
            pairs_per_1k=pairs_per_1k, ratios=Ratios(train_pct, valid_pct, test_pct),
            dedupe_threshold=dedupe_threshold, grounding_threshold=0.0 if no_grounding else grounding_threshold,
            max_attempts=max_attempts, batch_size=batch_size, language=language, temperature=temperature,
            seed=seed, leakage_threshold=0.0 if no_audit else leakage_threshold,
        )
        settings.validate()
        docs, skipped = read_documents(src, out, max_bytes=int(max_file_mb * 1024 * 1024))
        if not docs:
            raise DatakegError(f"no readable .md or .txt files under {src}",
                               "Point SRC at your documentation folder (hidden folders are skipped).")
        plan = make_plan(docs, skipped, settings)
        if dry_run:
            _print_estimate(estimate(plan, settings), plan)
            return
        prov = create_provider(provider, model=model, base_url=base_url, timeout=request_timeout,
                               structured=structured, max_retries=max_retries)
        _check_provider(prov, wait_for_model, quiet)  # before any work: says what to run when unavailable
        fingerprint = json.loads(json.dumps({**prov.describe(), "settings": settings.to_dict()}, default=str))
        fingerprint.pop("base_url", None)
        fingerprint.pop("device", None)
        mode = prepare_out(out, fingerprint, fresh=fresh, resume=resume)
        reporter = _reporter(quiet)
        for doc in docs:
            if doc.encoding != "utf-8":
                reporter.on_warning(f"{doc.relpath}: not UTF-8; decoded as {doc.encoding}")
        prov.prepare(lambda message: reporter.echo(f"{provider}: {message}"))
        gen = Generator(prov, settings, out, reporter, concurrency=concurrency or prov.default_concurrency,
                        limits=Limits(max_requests, max_tokens, max_cost))
        if mode == "resume" and len(gen.journal):
            reporter.echo(f"resuming: {len(gen.journal)} finished request(s) in {out} will be reused")
        try:
            manifest = gen.run(plan, src)
        finally:
            reporter.close()
    except DatakegError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Every finished request is saved in {out}; run the same command again to "
                   "resume where it stopped.", err=True)
        sys.exit(130)
    _print_summary(manifest, out)
    if manifest["totals"]["chunks_short_because_of_errors"]:
        click.echo(f"{manifest['totals']['chunks_short_because_of_errors']} chunk(s) got fewer pairs than their "
                   f"target because requests failed (see {out}/rejects.jsonl); rerun the same command to retry "
                   "them.", err=True)
        sys.exit(4)


def _check_provider(prov, wait_seconds: float, quiet: bool) -> None:
    import time

    from datakeg.errors import ProviderUnavailable

    deadline = time.monotonic() + wait_seconds
    said = False
    while True:
        try:
            prov.check()
            return
        except ProviderUnavailable:
            if time.monotonic() >= deadline:
                raise
            if not said and not quiet:
                click.echo(f"waiting up to {wait_seconds:g}s for {prov.name} to become available ...", err=True)
                said = True
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


CONFIG_EXAMPLE = """\
# datakeg generate configuration (TOML). Pass it with: datakeg generate SRC OUT --config datakeg.toml
# Any `generate` option can go here (dashes or underscores); command-line flags override this file.
# API keys never go here: set OPENROUTER_API_KEY / OPENAI_API_KEY in the environment.

provider = "ollama"            # ollama | openrouter | openai | local
model = "qwen2.5:3b"
# base_url = "http://localhost:8000/v1"   # OpenAI-compatible server, or the Ollama host

format = "completion"          # completion | chat | reasoning
# reasoning_format = "separate" # separate | integrated
# system_message = "You are the documentation expert for ..."

chunk_size = 4000
pairs_per_1k = 10
train_pct = 0.6
valid_pct = 0.2
test_pct = 0.2

dedupe_threshold = 90          # 0-100 (rapidfuzz)
grounding_threshold = 0.5      # share of answer words found in the chunk; 0 = off
leakage_threshold = 0.9        # TF-IDF cosine; valid/test questions this close to train are removed
max_attempts = 3
batch_size = 10
# language = "German"

concurrency = 4
request_timeout = 300
max_retries = 4
# max_requests = 5000
# max_tokens = 5000000
# max_cost = 5.0              # USD, OpenRouter only
"""


@cli.command("init-config", context_settings=CONTEXT)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="datakeg.toml")
def init_config(path):
    """Write a commented example configuration file for `generate --config` (default: datakeg.toml)."""
    if path.exists():
        _fail(DatakegError(f"{path} already exists; not overwriting it."))
    path.write_text(CONFIG_EXAMPLE, encoding="utf-8")
    click.echo(f"Wrote {path}. Use it with: datakeg generate SRC OUT --config {path}")


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--leakage-threshold", type=float, default=0.9, show_default=True,
              help="TF-IDF (char n-gram) cosine similarity at which a valid/test question counts as leaked.")
@click.option("--remove", is_flag=True, help="Remove the leaking pairs from valid/test and rebuild the merged files.")
def audit(out, leakage_threshold, remove):
    """Leakage audit of a datakeg output folder: valid/test questions too similar to a train question.

    \b
    Examples:
      datakeg audit out/
      datakeg audit out/ --leakage-threshold 0.8 --remove
    """
    from datakeg.audit import audit_dir

    try:
        hits, removed = audit_dir(out, leakage_threshold, remove)
    except DatakegError as exc:
        _fail(exc)
    click.echo(f"{len(hits)} valid/test question(s) with similarity >= {leakage_threshold:g} to a train question")
    for split, lineno, q, match, score in hits[:50]:
        click.echo(f"  {split}.jsonl line {lineno} ({score:.2f}): {q!r} ~ {match!r}")
    if remove:
        click.echo(f"removed {removed} pair(s); merged files rebuilt")
    sys.exit(1 if hits and not remove else 0)


def _print_estimate(est: dict, plan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Dry run (no model calls)", show_lines=False)
    for col in ("file", "chars", "chunks", "train", "valid", "test", "requests", "prompt tok", "completion tok"):
        table.add_column(col, justify="left" if col == "file" else "right")
    rows = est["files"] + [{"file": "TOTAL", **est["totals"]}]
    for f in rows:
        table.add_row(f["file"], f"{f['chars']:,}", str(f["chunks"]), *(str(f["target"][s]) for s in
                      ("train", "valid", "test")), str(f["requests"]), f"~{f['prompt_tokens']:,}",
                      f"~{f['completion_tokens']:,}")
    Console(width=max(100, Console().width)).print(table)
    for s in plan.skipped:
        click.echo(f"skipped {s.relpath}: {s.reason}")
    click.echo("Requests assume every call delivers what it asks for; backfill for short replies adds more.")


def _print_summary(manifest: dict, out: Path) -> None:
    t = manifest["totals"]
    parts = ", ".join(f"{s} {t['delivered'][s]}/{t['target'][s]}" for s in ("train", "valid", "test"))
    click.echo(f"Wrote {out}: {t['files']} file(s), {t['chunks']} chunk(s); pairs {parts}")
    dropped = ", ".join(f"{k} {v}" for k, v in t["dropped"].items()) or "none"
    click.echo(f"Dropped: {dropped}. Requests: {t['requests']} ({t['failed_requests']} failed, "
               f"{t['unparseable_replies']} unparseable); tokens: {t['prompt_tokens']:,} prompt + "
               f"{t['completion_tokens']:,} completion.")
    if manifest["skipped"]:
        click.echo(f"Skipped {len(manifest['skipped'])} file(s); see manifest.json.")


# --------------------------------------------------------------------------- merge / providers
@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def merge(out):
    """Rebuild OUT/train.jsonl, valid.jsonl and test.jsonl from the per-file outputs.

    Uses the file order recorded in OUT/manifest.json (or every *_train/_valid/_test.jsonl found).

    \b
    Example:
      datakeg merge ./out
    """
    from datakeg.writers import merge as do_merge

    try:
        counts = do_merge(out)
    except DatakegError as exc:
        _fail(exc)
    click.echo("Merged: " + ", ".join(f"{k}.jsonl {v} rows" for k, v in counts.items()))


@cli.command(context_settings=CONTEXT)
@click.option("--base-url", help="Check an OpenAI-compatible server at this URL for the openai provider.")
def providers(base_url):
    """List the providers and whether each is reachable and configured.

    \b
    Example:
      datakeg providers
      datakeg providers --base-url http://localhost:8000/v1
    """
    from datakeg.providers import provider_status

    for name in PROVIDERS:
        opts = {"base_url": base_url} if name == "openai" else {}
        if name == "openrouter":
            opts["model"] = "-"  # availability only: a model is chosen per run
        status = provider_status(name, **opts)
        mark = "ok  " if status.ok else "--  "
        click.echo(f"{mark}{name:<11} {DESCRIPTIONS[name]}")
        click.echo(f"    {status.detail}")


# --------------------------------------------------------------------------- convert / validate
def _list_templates(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from datakeg.convert import TARGETS

    click.echo("Targets (convert from any of: completion, chat, reasoning, alpaca, sharegpt; "
               "integrated <think> reasoning is read from completion/chat rows):\n")
    for t in TARGETS.values():
        extra = []
        if t.system != "kept":
            extra.append(f"system {t.system}")
        if t.reasoning:
            extra.append("keeps reasoning")
        if not t.multi_turn:
            extra.append("single turn")
        click.echo(f"  {t.name:<12} {t.description}" + (f" [{'; '.join(extra)}]" if extra else ""))
        click.echo(f"  {'':<12} {t.example}")
    ctx.exit(0)


@cli.command(context_settings=CONTEXT)
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("-t", "--template", "template_name", help="Target format (see -l).")
@click.option("-l", "--list-templates", is_flag=True, expose_value=False, is_eager=True, callback=_list_templates,
              help="List every target template and exit.")
@click.option("--source-format", type=click.Choice(["completion", "chat", "reasoning", "alpaca", "sharegpt"]),
              help="Shape of the input rows (default: detected from the first 200 rows).")
@click.option("--custom-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Jinja2 template file rendered per row into {\"text\"}. Variables: messages (list of "
              "{role, content}), system, question, answer, reasoning.")
@click.option("--system-message", help="Add this system turn to rows that have none (where the target has one).")
def convert(src, dst, template_name, source_format, custom_template, system_message):
    """Convert SRC (a JSONL or JSON-array file, or a folder with train/valid/test.jsonl) to a
    trainer's format in DST (a file, or a folder keeping the file names).

    \b
    Examples:
      datakeg convert -l
      datakeg convert out/train.jsonl train_chatml.jsonl --template chatml
      datakeg convert out/ out_llama3/ --template llama3 --system-message "You are the Tallyho docs expert."
      datakeg convert data.json data.jsonl --template messages --source-format alpaca
      datakeg convert out/ out_custom/ --custom-template my_template.jinja
    """
    from datakeg.convert import TARGETS, convert_file, custom_target

    try:
        if custom_template:
            target = custom_target(custom_template)
        elif template_name in TARGETS:
            target = TARGETS[template_name]
        else:
            raise DatakegError(f"unknown or missing --template {template_name!r}" if template_name else
                               "--template (or --custom-template) is required",
                               f"Choose one of: {', '.join(TARGETS)} (details: datakeg convert -l).")
        if src.is_dir():
            pairs = [(src / f"{s}.jsonl", dst / f"{s}.jsonl") for s in ("train", "valid", "test")
                     if (src / f"{s}.jsonl").exists()]
            if not pairs:
                raise DatakegError(f"{src} holds no train.jsonl, valid.jsonl or test.jsonl",
                                   "Point SRC at a datakeg output folder or at one file.")
        else:
            pairs = [(src, dst)]
        notes: set[str] = set()
        for s, d in pairs:
            report = convert_file(s, d, target, source_format, system_message)
            click.echo(f"{s} -> {d}: {report.rows} rows as {target.name} (source {report.detected})", err=True)
            for lineno, reason in report.skipped[:20]:
                click.echo(f"  line {lineno}: skipped: {reason}", err=True)
            if len(report.skipped) > 20:
                click.echo(f"  ... {len(report.skipped) - 20} more skipped lines", err=True)
            notes.update(report.notes)
        for note in sorted(notes):
            click.echo(f"note: {note}", err=True)
    except DatakegError as exc:
        _fail(exc)


@cli.command(context_settings=CONTEXT)
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--dedupe-threshold", type=float, default=90.0, show_default=True,
              help="For a datakeg output folder: report valid/test questions this similar to a train question.")
def validate(target, dedupe_threshold):
    """Check every line of a dataset FILE, or of train/valid/test.jsonl in a DIR: valid JSON, one
    known shape, non-empty fields, one shape per file, alternating roles. Exits 1 on any problem.

    \b
    Examples:
      datakeg validate out/
      datakeg validate out/train.jsonl
    """
    from datakeg.validate import cross_split_duplicates, dataset_files, validate_file

    files, is_output = dataset_files(target)
    if not files:
        _fail(DatakegError(f"no .jsonl files under {target}"))
    bad = 0
    for path in files:
        rep = validate_file(path)
        status = "ok" if rep.ok else f"{len(rep.problems)} problem(s)"
        click.echo(f"{path}: {rep.rows} rows, shape {rep.shape or '-'}: {status}")
        for lineno, reason in rep.problems[:50]:
            click.echo(f"  line {lineno}: {reason}")
        if len(rep.problems) > 50:
            click.echo(f"  ... {len(rep.problems) - 50} more")
        bad += len(rep.problems)
    if is_output:
        dups = cross_split_duplicates(target, dedupe_threshold)
        click.echo(f"cross-split duplicates (>= {dedupe_threshold:g} similar to a train question): {len(dups)}")
        for split, lineno, q, match in dups[:50]:
            click.echo(f"  {split}.jsonl line {lineno}: {q!r} ~ train {match!r}")
        bad += len(dups)
    sys.exit(1 if bad else 0)


# --------------------------------------------------------------------------- finetune
@cli.command(context_settings=CONTEXT)
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base-model", required=True, help="Model to tune: a local folder (Hugging Face format), a "
              "Hugging Face id already in your cache, or `bundled` for the offline Gemma 3 270M.")
@click.option("--backend", type=click.Choice(["auto", "mlx", "torch"]), default="auto", show_default=True,
              help="auto: MLX on Apple Silicon, PyTorch with CUDA; on a CPU pick one for small models.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Where adapter/, merged/ and finetune.json go (default: DATA/finetuned).")
@click.option("--epochs", type=float, default=3.0, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--learning-rate", type=float, default=2e-4, show_default=True)
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--lora-dropout", type=float, default=0.05, show_default=True)
@click.option("--max-length", type=int, default=1024, show_default=True, help="Longest row in tokens; longer "
              "rows are refused with a count instead of being cut.")
@click.option("--system-message", help="System turn added to rows without one (use the same one with eval).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Default: on with CUDA, off otherwise.")
@click.option("--export-ollama", "ollama_name", metavar="NAME", help="Also write OUTPUT/ollama/Modelfile and print "
              "the `ollama create NAME` command.")
def finetune(data, base_model, backend, output, epochs, batch_size, learning_rate, lora_rank, lora_alpha,
             lora_dropout, max_length, system_message, seed, gradient_checkpointing, ollama_name):
    """LoRA fine-tune BASE_MODEL on DATA/train.jsonl (validated on valid.jsonl), write the adapter and
    the merged model, and optionally an Ollama Modelfile.

    \b
    Examples:
      datakeg finetune out --base-model Qwen/Qwen2.5-0.5B-Instruct --export-ollama docs-expert
      datakeg finetune out --base-model ./my-model --backend torch --epochs 2 --batch-size 8
      datakeg finetune out --base-model mlx-community/Qwen2.5-0.5B-Instruct-4bit --backend mlx
    """
    from datakeg.finetune import FinetuneOptions
    from datakeg.finetune import finetune as run

    requested_base = base_model
    if base_model == "bundled":
        try:
            from datakeg.providers.local import bundled_model_dir

            base_model = str(bundled_model_dir(lambda message: click.echo(message, err=True)))
        except ImportError:
            _fail(DatakegError("--base-model bundled needs the [local] extra.",
                               'pip install torch==2.13.0 && pip install -e ".[local,torch]"'))
    opts = FinetuneOptions(data=data, base_model=base_model, output=output or data / "finetuned", backend=backend,
                           epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lora_rank=lora_rank,
                           lora_alpha=lora_alpha, lora_dropout=lora_dropout, max_length=max_length,
                           system_message=system_message, seed=seed, gradient_checkpointing=gradient_checkpointing)

    def progress(event):
        if event["event"] == "step":
            click.echo(f"step {event['step']}/{event['total']}  train loss {event['loss']:.4f}", err=True)
        elif event["event"] == "eval":
            click.echo(f"step {event['step']}  validation loss {event['val_loss']:.4f}", err=True)
        else:
            click.echo(event["message"], err=True)

    try:
        result = run(opts, progress)
        click.echo(f"Trained {result['steps']} steps with {result['backend']} on {result['device']} in "
                   f"{result['seconds']} s; loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}")
        click.echo(f"Adapter: {result['adapter']}\nMerged model: {result['merged']}")
        if ollama_name:
            from datakeg.finetune.ollama_export import export_ollama

            exp = export_ollama(Path(result["merged"]), Path(opts.output) / "ollama", ollama_name, system_message)
            click.echo(f"Ollama Modelfile ({exp['family']} template): {exp['modelfile']}\nRun: {exp['command']}")
        click.echo(f"Evaluate it: datakeg eval {data / 'test.jsonl'} -p local -m {result['merged']} --compare "
                   f"{requested_base}" + (f' --system-message "{system_message}"' if system_message else ""))
    except DatakegError as exc:
        _fail(exc)


# --------------------------------------------------------------------------- eval
@cli.command("eval", context_settings=CONTEXT)
@click.argument("test_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--provider", type=click.Choice(PROVIDERS), default="ollama", show_default=True)
@click.option("-m", "--model", help="Model to evaluate (for --provider local: a folder such as a fine-tuned "
              "merged model, or `bundled` / nothing for the bundled base model).")
@click.option("--base-url", help="Server URL (as for generate).")
@click.option("--compare", "compare_model", help="A second model on the same provider (e.g. the base model); "
              "the report shows both and the difference.")
@click.option("--judge-model", help="Also score each answer 0-5 with this model as judge (same provider).")
@click.option("--system-message", help="System turn sent before each question (use the one you trained with).")
@click.option("--limit", type=int, help="Only the first N questions.")
@click.option("--report", "report_prefix", type=click.Path(dir_okay=False, path_type=Path), default="eval_report",
              show_default=True, help="Writes PREFIX.json and PREFIX.md.")
@click.option("-c", "--concurrency", type=int, help="Questions in flight at once (default per provider).")
@click.option("--request-timeout", type=float, default=300.0, show_default=True)
def eval_cmd(test_file, provider, model, base_url, compare_model, judge_model, system_message, limit, report_prefix,
             concurrency, request_timeout):
    """Ask a model every question of TEST_FILE closed book (no document) and score its answers
    against the references: exact match, token F1, similarity, optional LLM judge.

    \b
    Examples:
      datakeg eval out/test.jsonl -m qwen2.5:3b
      datakeg eval out/test.jsonl -p local -m out/finetuned/merged --compare bundled
      datakeg eval out/test.jsonl -p openai --base-url http://localhost:8000/v1 -m tuned --judge-model big-model
    """
    from datakeg.evaluate import evaluate, load_test_pairs, write_reports
    from datakeg.providers import create_provider

    def build(name):
        prov = create_provider(provider, model=name,
                               base_url=base_url, timeout=request_timeout)
        prov.check()
        prov.prepare(lambda message: click.echo(f"{provider}: {message}", err=True))
        return prov

    try:
        pairs = load_test_pairs(test_file, limit)
        judge = build(judge_model) if judge_model else None
        reports = []
        for name in [model] + ([compare_model] if compare_model else []):
            prov = build(name)
            label = prov.describe().get("model")
            done = [0]

            def tick(item, label=label, done=done):
                done[0] += 1
                click.echo(f"[{label}] {done[0]}/{len(pairs)}", err=True)

            reports.append(evaluate(pairs, prov, system_message=system_message, judge=judge,
                                    concurrency=concurrency or prov.default_concurrency, on_item=tick))
        json_path, md_path = write_reports(reports, report_prefix)
    except DatakegError as exc:
        _fail(exc)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eval on {test_file} ({len(pairs)} questions)")
    cols = ("questions", "errors", "exact_match", "token_f1", "similarity", "judge")
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r in reports:
        s = r.summary()
        table.add_row(str(s["model"]), *("-" if s[c] is None else str(s[c]) for c in cols))
    if len(reports) == 2:
        a, b = (r.summary() for r in reports)
        table.add_row("difference (first - second)", "", "", *(f"{a[c] - b[c]:+.4f}" if isinstance(a[c], float) and
                                              isinstance(b[c], float) else "-" for c in cols[2:]))
    Console(width=max(100, Console().width)).print(table)
    click.echo(f"Reports: {json_path}, {md_path}")


def main() -> None:
    cli()
