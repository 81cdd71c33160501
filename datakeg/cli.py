"""Command-line interface: parse, call the API (:mod:`datakeg.api`), print. No pipeline logic
lives here. Errors from the core are turned into messages and exit codes in one place
(:class:`DatakegGroup`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from datakeg import __version__
from datakeg.errors import DatakegError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _scrub(text: str) -> str:
    try:
        from datakeg.support.secrets import scrub
    except ImportError:  # pragma: no cover
        return text
    return scrub(text)


class DatakegGroup(click.Group):
    """Maps core exceptions to messages and exit codes once, for every command:
    DatakegError -> its message, hint and exit code; Ctrl+C or SIGTERM -> 130 with how to resume."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatakegError as exc:
            click.echo(_scrub(f"Error: {exc.message}"), err=True)
            if exc.hint:
                click.echo(_scrub(exc.hint), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Every finished request is saved; run the same command again to resume "
                       "where it stopped.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # the reader went away (`datakeg audit OUT | head`): nothing to tell it; the work was done
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            ctx.exit(141)
        except OSError as exc:
            # disk full, read-only folder, ...: one clear line, not a chain of tracebacks
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"Error: {exc.strerror or exc}{where}.", err=True)
            click.echo("Nothing half-written was left behind; free space or fix permissions, then run the same "
                       "command again to resume.", err=True)
            ctx.exit(1)


@click.group(cls=DatakegGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="datakeg")
def cli():
    """datakeg: turn a folder of Markdown/TXT documentation into question-answer datasets
    (train/valid/test JSONL, no leakage between splits) for fine-tuning a documentation expert.

    \b
    Quick start (no server needed, uses the bundled offline model):
      datakeg generate testdoc/guide out-quickstart --provider local --pairs-per-1k 2 --max-attempts 1
    With Ollama (the default provider):
      ollama pull qwen2.5:3b && datakeg generate ./docs ./out
    """


# --------------------------------------------------------------------------- generate options
_SECRET_NAMES = ("api_key", "apikey", "key", "token", "secret", "password")


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _load_config(ctx, _param, path):
    """--config FILE: TOML keys become defaults for the options (flags still win)."""
    if path is None:
        return
    try:
        data = _toml_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from None
    names = {p.name for p in ctx.command.params if isinstance(p, click.Option)} - {"config"}
    defaults = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        lowered = name.lower()
        if lowered in _SECRET_NAMES or lowered.endswith(("_key", "_token", "_secret", "_password")):
            raise click.BadParameter(f"{key!r} looks like a secret; keys never go in the config file. Use the "
                                     "environment (OPENROUTER_API_KEY, OPENAI_API_KEY).", param_hint="--config")
        if name not in names or name in ("dry_run", "fresh", "resume", "refill", "quiet", "verbose"):
            raise click.BadParameter(f"unknown key {key!r} in {path}", param_hint="--config")
        if name == "base_url" and isinstance(value, str):
            value = [value]  # one server, or a list of them
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _click_type(f):
    ann = str(f.type)
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    if "bool" in ann:
        return None
    if "int" in ann:
        return click.INT
    if "float" in ann:
        return click.FLOAT
    return click.STRING


def settings_options(func):
    """One click option per field of :class:`datakeg.settings.Settings` (defaults and help from there)."""
    from datakeg.settings import option_fields

    for f in reversed(option_fields()):
        flag = "--" + f.name.replace("_", "-")
        decls = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        kw = {"help": f.metadata["help"], "default": f.default}
        if "bool" in str(f.type):
            kw["is_flag"] = True
        else:
            kw["type"] = _click_type(f)
            kw["show_default"] = f.default is not None
            if f.metadata.get("metavar"):
                kw["metavar"] = f.metadata["metavar"]
        func = click.option(*decls, f.name, **kw)(func)
    return func


class _ProviderChoice(click.ParamType):
    """A provider name, checked against the registry (built-ins and entry points) when used."""

    name = "provider"

    def get_metavar(self, param, *args, **kwargs):
        from datakeg.providers import provider_names

        return "[" + "|".join(provider_names()) + "]"

    def convert(self, value, param, ctx):
        from datakeg.providers import provider_names

        names = provider_names()
        if value not in names:
            import difflib

            close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
            guess = f" Did you mean {close[0]!r}?" if close else ""
            self.fail(f"{value!r} is not a provider.{guess} Choose one of: {', '.join(names)}.", param, ctx)
        return value


# --------------------------------------------------------------------------- generate
@cli.command(context_settings=CONTEXT)
@click.argument("src", type=click.Path(exists=True, file_okay=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("-p", "--provider", type=_ProviderChoice(), default="ollama", show_default=True,
              help="Where the model runs (see `datakeg providers`): ollama, openrouter, openai, local, or one "
              "registered by a plugin.")
@click.option("-m", "--model", help="Model name. Defaults: ollama qwen2.5:3b; openai the server's only "
              "model; local Gemma 3 270M (or a local path / HF id); openrouter has none (required).")
@click.option("--base-url", multiple=True, help="Server URL: OpenAI-compatible base URL (e.g. "
              "http://localhost:8000/v1) or the Ollama host (default: $OLLAMA_HOST or http://localhost:11434). "
              "Repeat it for several servers of the same model: requests go to the least busy one, a failing "
              "one is drained and its work retried on the others.")
@click.option("-c", "--concurrency", type=int, help="Requests in flight at once, per server. Default: 4 for "
              "remote providers, 2 for Ollama, 1 for the offline model. Outputs are identical whatever the value.")
@settings_options
@click.option("--resume", is_flag=True, help="Reuse OUT even when its run had different settings (only the "
              "requests that still match are reused). A rerun with the same settings resumes by itself.")
@click.option("--fresh", is_flag=True, help="Forget the run recorded in OUT and start over.")
@click.option("--refill", is_flag=True, help="Replace the pairs rejected in `datakeg review OUT`: their chunk asks "
              "the model again for that many, avoiding the rejected questions (gates and leakage audit as usual). "
              "Finished requests are replayed; only the new ones are sent. Not a setting: OUT stays the same run.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=_load_config,
              help="TOML file with any of these options (flags override it). See `datakeg init-config`.")
@click.option("--dry-run", is_flag=True, help="Make no model calls: show chunks, targets, requests and a "
              "token estimate per file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (errors are still shown).")
@click.option("-v", "--verbose", is_flag=True, help="Also show what third-party libraries print (transformers and "
              "huggingface_hub progress bars, logging and warnings), hidden by default.")
def generate(src, out, provider, model, base_url, concurrency, resume, fresh, refill, dry_run, quiet, verbose,
             **settings):
    """Generate train/valid/test question-answer pairs from the .md/.txt files under SRC into OUT.

    \b
    Writes, mirroring SRC's folders:
      OUT/<path>_train.jsonl, _valid.jsonl, _test.jsonl   per source file
      OUT/train.jsonl, valid.jsonl, test.jsonl           all files merged
      OUT/manifest.json                                  settings, targets vs delivered, drops, usage
      OUT/rejects.jsonl                                  unparseable replies, failed requests, dropped pairs
      OUT/README.md                                      dataset card (datasets.load_dataset("OUT"))

    \b
    Examples:
      datakeg generate ./docs ./out                                   # Ollama, qwen2.5:3b
      datakeg generate ./docs ./out -m llama3.2:3b --format chat --system-message "You are a docs expert."
      datakeg generate ./docs ./out -p openai --base-url http://localhost:8000/v1
      OPENROUTER_API_KEY=... datakeg generate ./docs ./out -p openrouter -m qwen/qwen-2.5-7b-instruct
      datakeg generate ./docs ./out -p local --pairs-per-1k 2           # offline demo model, no server
      datakeg generate ./docs ./out --dry-run                           # estimate first
      datakeg generate ./docs ./out -p openai -m M --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1
      datakeg generate ./docs ./out --judge-model qwen2.5:7b --paraphrases 2   # curate, and teach facts
      datakeg generate ./docs ./out --task conversation                # 3-turn chat rows (see `datakeg tasks`)
      datakeg generate ./docs ./out --task mytask.toml                 # your instructions, kinds, audiences
      datakeg generate ./docs ./out --refill                           # replace the pairs review rejected
    """
    import datakeg

    if dry_run:
        dry = datakeg.plan(src, out, **settings)
        _print_estimate(dry)
        return
    if verbose:
        import os

        os.environ["DATAKEG_VERBOSE"] = "1"  # read by in-process providers (--provider local)
    from datakeg.progress import reporter as make_reporter

    reporter = make_reporter(quiet, settings.get("batch_size") or 15)
    try:
        result = datakeg.generate(src, out, provider=provider, model=model, base_url=list(base_url) or None,
                                  concurrency=concurrency, fresh=fresh, resume=resume, refill=refill,
                                  callbacks=reporter,
                                  **settings)
    finally:
        reporter.close()
    _print_summary(result.manifest, out)
    if result.nothing_delivered:
        t = result.manifest["totals"]
        click.echo(f"Nothing was delivered: 0 pairs of {sum(t['target'].values())} after {t['requests']} request(s) "
                   f"({t['failed_requests']} failed, {t['unparseable_replies']} unparseable, "
                   f"{t['truncated_replies']} cut off); see {out}/rejects.jsonl. Manifest status: nothing_delivered.",
                   err=True)
    if result.chunks_short_because_of_errors:
        click.echo(f"{result.chunks_short_because_of_errors} chunk(s) got fewer pairs than their target because "
                   f"requests failed (see {out}/rejects.jsonl); rerun the same command to retry them.", err=True)
    if result.nothing_delivered or result.chunks_short_because_of_errors:
        sys.exit(4)


@cli.command("init-config", context_settings=CONTEXT)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="datakeg.toml")
def init_config(path):
    """Write a commented example configuration file for `generate --config` (default: datakeg.toml)."""
    from datakeg.settings import config_example

    if path.exists():
        raise DatakegError(f"{path} already exists; not overwriting it.")
    path.write_text(config_example(), encoding="utf-8")
    click.echo(f"Wrote {path}. Use it with: datakeg generate SRC OUT --config {path}")


@cli.group("tasks", context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def tasks(ctx):
    """List the built-in tasks (what `generate --task NAME` asks the model to write), one line each.

    \b
    A task is a TOML file: the system prompt, the instructions (a Jinja2 template over named fields:
    source, section, tag, excerpt, count, split, language, avoid, reasoning, fields, example, turns,
    kinds, audience, style, examples; any other name is an error), the audiences, the mix of question
    kinds with weights, the answer style, few-shot examples and the number of turns. See the README's
    "Task files".

    \b
    Examples:
      datakeg tasks                                   # the built-ins
      datakeg tasks show mix > mytask.toml            # copy one, edit it ...
      datakeg generate ./docs ./out --task mytask.toml
      datakeg generate ./docs ./out --task conversation   # 3-turn chat rows
    """
    if ctx.invoked_subcommand is not None:
        return
    from datakeg.generation.task import builtin_tasks

    for t in builtin_tasks():
        extra = [f"{t.turns} turns"] if t.turns > 1 else []
        if t.kinds:
            extra.append("kinds " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in t.mix.items()))
        click.echo(f"  {t.name:<13} {t.description}" + (f" [{'; '.join(extra)}]" if extra else ""))
    click.echo("\nPrint one with `datakeg tasks show NAME` (to copy and edit); use it with `generate --task NAME|FILE`.")


@tasks.command("show", context_settings=CONTEXT)
@click.argument("name")
def tasks_show(name):
    """Print the task file NAME (a built-in, or a task file's path, checked), to copy and edit."""
    from datakeg.generation.task import load_task

    click.echo(load_task(name).text, nl=False)


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--leakage-threshold", type=float, default=0.9, show_default=True,
              help="TF-IDF (char n-gram) cosine similarity at which a question counts as leaked.")
@click.option("--remove", is_flag=True, help="Remove the leaking pairs from the per-file outputs and rebuild the "
              "merged files.")
@click.option("--semantic-dedupe", is_flag=True, help="Also flag questions whose sentence embeddings are within "
              "--semantic-threshold (rewordings TF-IDF misses), inside a document's split too. Needs the [semantic] "
              "extra.")
@click.option("--semantic-model", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="A sentence-transformers model folder. Default: the packaged all-MiniLM-L6-v2 (English).")
@click.option("--semantic-threshold", type=click.FloatRange(0.01, 1), default=0.85, show_default=True,
              help="Cosine similarity of sentence embeddings at which two questions count as the same.")
def audit(out, leakage_threshold, remove, semantic_dedupe, semantic_model, semantic_threshold):
    """Leakage audit of a folder of dataset files (train/valid/test.jsonl, such as a `generate` output),
    with the rule `generate` applies: a valid question too similar to a train question, a test
    question too similar to a train or valid one, or a question repeated in the same split by another
    document. Exits 1 when any is found. Reads rows with a question (completion, chat, reasoning,
    alpaca, sharegpt); plain {"text"} rows (a chatml/llama3/... `convert` output) hold none and are
    refused with a message (exit 2).

    Also reports the taught share: for valid and test, the share of questions whose answer a train
    pair of the same chunk states (so a fine-tune can learn it), and lists the untaught ones.

    \b
    Examples:
      datakeg audit out/
      datakeg audit out/ --leakage-threshold 0.8 --remove
      datakeg audit out/ --semantic-dedupe
    """
    import datakeg

    hits, removed = datakeg.audit(out, leakage_threshold=leakage_threshold, remove=remove,
                                  on_warning=lambda message: click.echo(f"warning: {message}", err=True),
                                  semantic_dedupe=semantic_dedupe, semantic_model=semantic_model,
                                  semantic_threshold=semantic_threshold)
    rule = f"similarity >= {leakage_threshold:g}"
    if semantic_dedupe:
        rule += f" (TF-IDF) or >= {semantic_threshold:g} (sentence embeddings)"
    click.echo(f"{len(hits)} leaking question(s): {rule} to a question of an earlier "
               "split (valid~train, test~train, test~valid) or of the same split in another document (repeat)"
               + (" or in the same document (duplicate)" if semantic_dedupe else ""))
    for h in hits[:50]:
        how = ", semantic" if h.method == "semantic" else ""
        click.echo(f"  {h.split}.jsonl line {h.line} [{h.kind}{how}, {h.score:.2f}]: {h.question!r} ~ {h.similar!r}")
    if len(hits) > 50:
        click.echo(f"  ... {len(hits) - 50} more")
    if remove:
        click.echo(f"removed {removed} pair(s); merged files rebuilt")
    _print_taught(out)
    sys.exit(1 if hits and not remove else 0)


def _print_taught(out: Path) -> None:
    from datakeg.curation.taught import taught_share
    from datakeg.dataset.provenance import PROVENANCE

    if not (Path(out) / PROVENANCE).exists():
        click.echo(f"taught share: not measured ({out} has no {PROVENANCE}; `datakeg merge {out}` writes it)")
        return
    report = taught_share(Path(out))
    click.echo(f"taught share ({report.rule}):")
    for split, v in report.splits.items():
        share = "-" if v["share"] is None else f"{v['share']:.0%}"
        click.echo(f"  {split}: {share} ({v['taught']} of {v['traced']} traced questions"
                   + (f"; {v['questions'] - v['traced']} without provenance" if v["questions"] > v["traced"] else "")
                   + ")")
    if report.untaught:
        click.echo(f"{len(report.untaught)} untaught question(s) (no train pair of their chunk states the answer; "
                   "a fine-tune cannot learn them; `generate --held-out taught` avoids them):")
    for u in report.untaught[:50]:
        click.echo(f"  {u.split}.jsonl line {u.line} [{u.file} chunk {u.chunk}, {u.score:.2f}]: {u.question!r}")
    if len(report.untaught) > 50:
        click.echo(f"  ... {len(report.untaught) - 50} more")


def _print_estimate(dry) -> None:
    from rich.console import Console
    from rich.table import Table

    est = dry.estimate
    table = Table(title="Dry run (no model calls)", show_lines=False)
    for col in ("file", "chars", "chunks", "train", "valid", "test", "requests", "prompt tok", "completion tok"):
        table.add_column(col, justify="left" if col == "file" else "right")
    rows = est["files"] + [{"file": "TOTAL", **est["totals"]}]
    for f in rows:
        table.add_row(f["file"], f"{f['chars']:,}", str(f["chunks"]), *(str(f["target"][s]) for s in
                      ("train", "valid", "test")), str(f["requests"]), f"~{f['prompt_tokens']:,}",
                      f"~{f['completion_tokens']:,}")
    Console(width=max(100, Console().width)).print(table)
    for s in dry.skipped:
        click.echo(f"skipped {s.relpath}: {s.reason}")
    for w in dry.warnings:
        click.echo(f"warning: {w}")
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
    if manifest.get("paraphrases"):
        p = manifest["paraphrases"]
        click.echo(f"Paraphrases: {p['added']} added to train ({p['per_question']} per question asked), "
                   f"{sum(p['dropped'].values())} dropped.")
    if manifest.get("judge"):
        j = manifest["judge"]
        click.echo(f"Judge: {j['pairs_scored']} pair(s) scored in {j['requests']} request(s), {j['dropped']} "
                   f"below the threshold, {j['unjudged']} unjudged.")
    if manifest.get("coverage"):
        from datakeg.curation.coverage import summary_lines

        for line in summary_lines(manifest["coverage"]):
            click.echo(line)


# --------------------------------------------------------------------------- merge / providers
@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def merge(out):
    """Rebuild OUT/train.jsonl, valid.jsonl and test.jsonl from the per-file outputs, and the
    dataset card OUT/README.md.

    Uses the file order recorded in OUT/manifest.json (or every *_train/_valid/_test.jsonl found).

    \b
    Example:
      datakeg merge ./out
    """
    import datakeg

    counts = datakeg.merge(out, on_warning=lambda message: click.echo(f"warning: {message}", err=True))
    click.echo("Merged: " + ", ".join(f"{k}.jsonl {v} rows" for k, v in counts.items()))
    _echo_review(out, "Review decisions applied")


def _echo_review(out: Path, label: str) -> None:
    """One line on the review decisions recorded in OUT (datakeg review), when there are any."""
    from datakeg.dataset.review_journal import journal_path, summary

    if Path(out).is_dir() and journal_path(out).exists():
        s = summary(out)
        click.echo(f"{label}: {s['reviewed']} pair(s) reviewed: {s['kept']} kept, {s['edited']} edited, "
                   f"{s['rejected']} rejected, {s['restored']} restored (from {journal_path(out)}).")


@cli.command(context_settings=CONTEXT)
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but 127.0.0.1/localhost lets other machines reach the page "
                   "(they still need the token).")
@click.option("--no-apply", is_flag=True, help="Do not rebuild train/valid/test.jsonl with the decisions on exit "
              "(run `datakeg merge OUT` later).")
def review(out, port, host, no_apply):
    """Review every pair of OUT beside its source text in a local web page, and correct it.

    Prints a URL with a random token (needed by every request); open it in a browser. Keep,
    reject, edit or restore pairs (dropped ones too), with keyboard shortcuts. Every decision is
    saved at once in OUT/.datakeg/review.jsonl and applied by `datakeg merge` (and by every later
    generate); on exit (Ctrl+C) the merged files are rebuilt with them. Needs the [review] extra.

    \b
    Examples:
      datakeg review ./out
      datakeg review ./out --port 9000
    """
    from datakeg.review.server import ReviewServer

    import threading

    # Ctrl+C (or SIGTERM) at any moment sets `stop`, even when started from a background job, which
    # inherits SIGINT ignored; the server then stops cleanly and the decisions are applied
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = ReviewServer(out, host=host, port=port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: other machines on the network can reach this page. Anyone with the "
                   "URL below can read and change the dataset; the traffic is not encrypted.", err=True)
    click.echo(f"Reviewing {out}: {len(server.model.entries)} pair(s) (delivered and dropped).")
    click.echo(f"Open {server.url}", nl=True)
    click.echo("Press Ctrl+C to stop.", err=True)
    sys.stdout.flush()
    server.serve(stop)
    click.echo("Stopped.", err=True)
    if server.changed and not no_apply:
        import datakeg
        from datakeg.errors import OutputBusy

        try:
            counts = datakeg.merge(out, on_warning=lambda message: click.echo(f"warning: {message}", err=True))
            click.echo("Applied the decisions: " + ", ".join(f"{k}.jsonl {v} rows" for k, v in counts.items()))
        except OutputBusy as exc:
            click.echo(f"warning: decisions not applied yet: {exc.message} Run `datakeg merge {out}` afterwards.",
                       err=True)
    _echo_review(out, "Review")


@cli.command(context_settings=CONTEXT)
@click.option("--base-url", help="Check an OpenAI-compatible server at this URL for the openai provider.")
def providers(base_url):
    """List the providers and whether each is reachable and configured.

    \b
    Example:
      datakeg providers
      datakeg providers --base-url http://localhost:8000/v1
    """
    from datakeg.providers import descriptions, provider_class, provider_status

    for name, description in descriptions().items():
        opts = {"base_url": base_url} if name == "openai" else {}
        try:
            if provider_class(name).key_env and name != "openai":
                opts["model"] = "-"  # availability only: a model is chosen per run
        except DatakegError:
            pass
        status = provider_status(name, **opts)
        mark = "ok  " if status.ok else "--  "
        click.echo(f"{mark}{name:<11} {description}")
        click.echo(f"    {status.detail}")


# --------------------------------------------------------------------------- convert / validate
def _list_templates(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from datakeg.dataset.conversion import TARGETS

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
@click.option("--force", is_flag=True, help="Write into a non-empty DST folder that convert did not write: the files "
              "convert writes replace those of the same names; nothing else there is touched.")
@click.option("--tokenizer", metavar="T", help="With --bin: a local Hugging Face tokenizer folder, `bundled` (the "
              "offline model's), or a tiktoken encoding name (e.g. r50k_base; ChatML specials added as new ids).")
@click.option("--bin", "binary", is_flag=True, help="Write pre-tokenized files for nanoGPT-style trainers into the "
              "folder DST: train.bin/val.bin/test.bin (uint16 or uint32 token ids, rows separated by EOS), "
              "*.mask.bin (1 on assistant tokens) and meta.json. Needs --template chatml and --tokenizer.")
def convert(src, dst, template_name, source_format, custom_template, system_message, force, tokenizer, binary):
    """Convert SRC (a JSONL or JSON-array file, or a folder with train/valid/test.jsonl) to a
    trainer's format in DST (a file, or a folder keeping the file names; a folder is written
    atomically, and a non-empty folder convert did not write is refused unless --force).

    \b
    Examples:
      datakeg convert -l
      datakeg convert out/train.jsonl train_chatml.jsonl --template chatml
      datakeg convert out/ out_llama3/ --template llama3 --system-message "You are the Tallyho docs expert."
      datakeg convert data.json data.jsonl --template messages --source-format alpaca
      datakeg convert out/ out_custom/ --custom-template my_template.jinja
      datakeg convert out/ out_bin/ --template chatml --tokenizer r50k_base --bin
      datakeg convert out/ out_bin/ --template chatml --tokenizer ./my-tokenizer --bin
    """
    import datakeg

    reports = datakeg.convert(src, dst, template_name, custom_template=custom_template,
                              source_format=source_format, system_message=system_message, force=force,
                              tokenizer=tokenizer, binary=binary,
                              on_message=lambda message: click.echo(message, err=True))
    notes: set[str] = set()
    for report in reports:
        click.echo(f"{report.src} -> {report.dst}: {report.rows} rows as {report.target}; "
                   f"input rows: {report.detected}", err=True)
        for lineno, reason in report.skipped[:20]:
            click.echo(f"  line {lineno}: skipped: {reason}", err=True)
        if len(report.skipped) > 20:
            click.echo(f"  ... {len(report.skipped) - 20} more skipped lines", err=True)
        notes.update(report.notes)
    for note in sorted(notes):
        click.echo(f"note: {note}", err=True)
    _echo_review_state(src, err=True)


def _echo_review_state(folder: Path, err: bool = False) -> None:
    from datakeg.dataset.review_journal import describe

    line = describe(folder) if Path(folder).is_dir() else None
    if line:
        click.echo(line, err=err)


@cli.command(context_settings=CONTEXT)
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--dedupe-threshold", type=float, default=90.0, show_default=True,
              help="For a datakeg output folder: report valid/test questions this similar to a train question.")
@click.option("--require-all-splits", is_flag=True, help="Fail (exit 1) on an empty file, and on a folder "
              "without all of train/valid/test.jsonl. Without it an empty split is reported and accepted.")
def validate(target, dedupe_threshold, require_all_splits):
    """Check every line of a dataset FILE, or of train/valid/test.jsonl in a DIR: valid JSON, one
    known shape, non-empty fields, one shape per file, alternating roles. Exits 1 on any problem.
    An empty split (a small run can deliver none) is reported as empty and accepted unless
    --require-all-splits.

    \b
    Examples:
      datakeg validate out/
      datakeg validate out/train.jsonl
      datakeg validate out/ --require-all-splits
    """
    import datakeg

    result = datakeg.validate(target, dedupe_threshold=dedupe_threshold, require_all_splits=require_all_splits)
    for rep in result.files:
        status = "ok" if rep.ok else f"{len(rep.problems)} problem(s)"
        if rep.empty:
            click.echo(f"{rep.path}: empty (0 rows): {status}")
        else:
            click.echo(f"{rep.path}: {rep.rows} rows, shape {rep.shape or '-'}: {status}")
        for lineno, reason in rep.problems[:50]:
            click.echo(f"  line {lineno}: {reason}")
        if len(rep.problems) > 50:
            click.echo(f"  ... {len(rep.problems) - 50} more")
    for split in result.missing:
        click.echo(f"{target / (split + '.jsonl')}: missing (--require-all-splits)")
    if result.is_output:
        click.echo(f"cross-split duplicates (>= {dedupe_threshold:g} similar to a train question): "
                   f"{len(result.cross_split)}")
        if result.text_rows:
            click.echo('  note: {"text"} rows hold no question to compare: for them only identical rows count '
                       "as duplicates (validate the folder before `convert` for the similarity check)")
        for split, lineno, q, match in result.cross_split[:50]:
            click.echo(f"  {split}.jsonl line {lineno}: {q!r} ~ train {match!r}")
        _echo_review_state(target)
    sys.exit(0 if result.ok else 1)


# --------------------------------------------------------------------------- finetune
@cli.command(context_settings=CONTEXT)
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base-model", required=True, help="Model to tune: a local folder (Hugging Face format), a "
              "Hugging Face id already in your cache, or `bundled` for the offline Gemma 3 270M.")
@click.option("--backend", type=click.Choice(["auto", "mlx", "torch"]), default="auto", show_default=True,
              help="auto: MLX on Apple Silicon, PyTorch with CUDA; on a Linux CPU pass --backend torch "
              "(small models only). MLX is for Apple Silicon.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              help="Where adapter/, merged/ and finetune.json go (default: DATA/finetuned).")
@click.option("--epochs", type=float, default=10.0, show_default=True, help="Passes over train; the defaults were measured on small fact sets (README); the best validation step is kept.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--lora-rank", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=float, default=32.0, show_default=True)
@click.option("--lora-dropout", type=float, default=0.05, show_default=True)
@click.option("--max-length", type=int, default=1024, show_default=True, help="Longest row in tokens; longer "
              "rows are refused with a count instead of being cut.")
@click.option("--system-message", help="System turn added to rows without one (use the same one with eval).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Default: on with CUDA; on the CPU on only when the memory estimate says the run needs it.")
@click.option("--save-every", type=int, default=50, show_default=True, metavar="N",
              help="Write a checkpoint every N steps (and at the end of each epoch); 0: at epoch ends only.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUTPUT/checkpoints "
              "(adapter, optimizer, scheduler, step) after an interruption; same data and options.")
@click.option("--force", is_flag=True, help="Write into a non-empty OUTPUT folder that finetune did not write: "
              "adapter/, merged/, checkpoints/, ollama/ and finetune.json replace entries of the same names; "
              "nothing else there is touched.")
@click.option("--export-ollama", "ollama_name", metavar="NAME", help="Also write OUTPUT/ollama/Modelfile and print "
              "the `ollama create NAME` command.")
def finetune(data, base_model, backend, output, epochs, batch_size, learning_rate, lora_rank, lora_alpha,
             lora_dropout, max_length, system_message, seed, gradient_checkpointing, save_every, resume, force,
             ollama_name):
    """LoRA fine-tune BASE_MODEL on DATA/train.jsonl (validated on valid.jsonl), write the adapter and
    the merged model, and optionally an Ollama Modelfile. Each folder is written beside its final name
    and renamed into place (an interrupted save leaves the previous one or none); a non-empty OUTPUT
    that finetune did not write is refused unless --force.

    \b
    Examples:
      datakeg finetune out --base-model Qwen/Qwen2.5-0.5B-Instruct --export-ollama docs-expert
      datakeg finetune out --base-model ./my-model --backend torch --epochs 2 --batch-size 8
      datakeg finetune out --base-model mlx-community/Qwen2.5-0.5B-Instruct-4bit --backend mlx
    """
    from datakeg.training.finetune import FinetuneOptions
    from datakeg.training.finetune import finetune as run

    requested_base = base_model
    if base_model == "bundled":
        try:
            from datakeg.providers.local import bundled_model_dir

            base_model = str(bundled_model_dir(lambda message: click.echo(message, err=True)))
        except ImportError:
            raise DatakegError("--base-model bundled needs the [local] extra.",
                               'pip install torch==2.13.0 && pip install -e ".[local,torch]"') from None
    opts = FinetuneOptions(data=data, base_model=base_model, output=output or data / "finetuned", backend=backend,
                           epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lora_rank=lora_rank,
                           lora_alpha=lora_alpha, lora_dropout=lora_dropout, max_length=max_length,
                           system_message=system_message, seed=seed, gradient_checkpointing=gradient_checkpointing,
                           save_every=save_every, resume=resume, force=force)

    def clock(seconds):
        seconds = round(seconds)
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    def progress(event):
        if event["event"] == "step":
            timing = (f"  {event['seconds_per_step']:.2f} s/step  ETA {clock(event['eta_seconds'])}"
                      if "seconds_per_step" in event else "")
            click.echo(f"step {event['step']}/{event['total']}  train loss {event['loss']:.4f}{timing}", err=True)
        elif event["event"] == "eval":
            when = "before training" if event["step"] == 0 else f"step {event['step']}"
            click.echo(f"{when}  validation loss {event['val_loss']:.4f}", err=True)
        else:
            click.echo(event["message"], err=True)

    result = run(opts, progress)
    resumed = f" (resumed at step {result['resumed_from_step']})" if result.get("resumed_from_step") is not None else ""
    click.echo(f"Trained {result['steps']} steps{resumed} with {result['backend']} on {result['device']} in "
               f"{result['seconds']} s; loss {result['first_loss']:.4f} -> {result['final_loss']:.4f}")
    click.echo(f"Adapter: {result['adapter']}\nMerged model: {result['merged']}")
    best = result.get("best")
    if best and best.get("step") is not None:
        where = f" (adapter in {best['adapter']})" if best.get("adapter") else " (the base model itself)"
        click.echo(f"Best validation loss {best['val_loss']:.4f} at step {best['step']}{where}")
    if ollama_name:
        from datakeg.training.ollama_export import export_ollama

        exp = export_ollama(Path(result["merged"]), Path(opts.output) / "ollama", ollama_name, system_message)
        click.echo(f"Ollama Modelfile ({exp['family']} template): {exp['modelfile']}\nRun: {exp['command']}")
    click.echo(f"Evaluate it: datakeg eval {data / 'test.jsonl'} -p local -m {result['merged']} --compare "
               f"{requested_base}" + (f' --system-message "{system_message}"' if system_message else ""))


# --------------------------------------------------------------------------- eval
@cli.command("eval", context_settings=CONTEXT)
@click.argument("test_files", metavar="TEST_FILE...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--provider", type=_ProviderChoice(), default="ollama", show_default=True)
@click.option("-m", "--model", help="Model to evaluate (for --provider local: a folder such as a fine-tuned "
              "merged model, or `bundled` / nothing for the bundled base model).")
@click.option("--base-url", help="Server URL (as for generate).")
@click.option("--compare", "compare_model", help="A second model on the same provider (e.g. the base model); "
              "the report shows both and the difference.")
@click.option("--judge-model", help="Also score each answer 0-5 with this model as judge (same provider).")
@click.option("--system-message", help="System turn sent before each question (use the one you trained with).")
@click.option("--rag", "rag_src", type=click.Path(exists=True, path_type=Path), metavar="SRC",
              help="Also answer every question with the top --rag-k chunks BM25 retrieves from SRC (your docs "
              "folder, chunked as generate chunks it). Needs the [rag] extra.")
@click.option("--rag-k", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Chunks given to the model with --rag.")
@click.option("--chunk-size", type=click.IntRange(200, 1_000_000), metavar="CHARS",
              help="Chunk size for --rag (default: the one in the manifest beside TEST_FILE, else generate's "
              "default), so retrieved chunks are the chunks the pairs were written from.")
@click.option("--open-book", is_flag=True, help="Also answer every question with its own source chunk (from "
              "provenance.jsonl and chunks.jsonl beside TEST_FILE): the ceiling of retrieval.")
@click.option("--limit", type=int, help="Only the first N questions (of each file).")
@click.option("--report", "report_prefix", type=click.Path(dir_okay=False, path_type=Path), default="eval_report",
              show_default=True, help="Writes PREFIX.json and PREFIX.md.")
@click.option("-c", "--concurrency", type=int, help="Questions in flight at once (default per provider).")
@click.option("--request-timeout", type=float, default=300.0, show_default=True)
@click.option("--wait-for-model", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Wait this long for a server that is still starting (or busy) before giving up.")
@click.option("--structured", type=click.Choice(["auto", "schema", "json", "none"]), default="auto",
              show_default=True, help="Structured output for the judge's replies (as for generate): auto tries a "
              "JSON schema and steps down to what the server accepts; the answers are always plain text.")
def eval_cmd(test_files, provider, model, base_url, compare_model, judge_model, system_message, rag_src, rag_k,
             chunk_size, open_book, limit, report_prefix, concurrency, request_timeout, wait_for_model, structured):
    """Ask a model every question of TEST_FILE (several: e.g. valid.jsonl test.jsonl, reported per split)
    closed book (no document) and score its answers against the references: exact match, token F1,
    similarity, optional LLM judge. With --rag and --open-book the same model also answers with
    retrieved chunks and with the pair's own chunk, side by side, with the retrieval hit rate and the
    headline "closed book reaches N% of RAG".

    \b
    Examples:
      datakeg eval out/test.jsonl -m qwen2.5:3b
      datakeg eval out/test.jsonl -p local -m out/finetuned/merged --compare bundled
      datakeg eval out/test.jsonl -p openai --base-url http://localhost:8000/v1 -m tuned --judge-model big-model
      datakeg eval out/valid.jsonl out/test.jsonl -m tuned --compare qwen2.5:3b --rag docs/ --rag-k 3 --open-book
    """
    from datakeg.evaluation.evaluate import (
        SIDE_COLUMNS,
        SUMMARY_COLUMNS,
        echo_baseline,
        evaluate,
        headlines,
        hit_rate,
        load_questions,
        side_rows,
        summary_rows,
        write_reports,
    )
    from datakeg.evaluation.rag import Index, default_chunk_size
    from datakeg.providers import create_provider

    def build(name):
        prov = create_provider(provider, model=name,
                               base_url=base_url, timeout=request_timeout, structured=structured)
        prov.on_notice = lambda message: click.echo(f"warning: {message}", err=True)
        prov.wait_ready(wait_for_model, lambda message: click.echo(message, err=True))
        prov.prepare(lambda message: click.echo(f"{provider}: {message}", err=True))
        return prov

    qs = load_questions(list(test_files), limit)
    pairs = qs.pairs
    keys = [s.key if s else None for s in qs.sources]
    if open_book and not any(qs.sources):
        raise DatakegError(
            f"--open-book needs the provenance of {', '.join(map(str, test_files))}: provenance.jsonl and "
            "chunks.jsonl beside a merged train/valid/test.jsonl, found none that matches.",
            "Point TEST_FILE at OUT/test.jsonl of a datakeg 0.3+ output folder (run `datakeg merge OUT` to "
            "rebuild the provenance), or leave out --open-book.")
    modes = {"closed": None}
    if rag_src is not None:
        size = chunk_size or default_chunk_size(Path(test_files[0]).parent)
        index = Index.build(rag_src, size)
        click.echo(f"RAG: {len(index.passages)} chunks of {rag_src} (chunk size {size}), top {rag_k} per question",
                   err=True)
        if any(qs.sources) and not any(s.key in {p.key for p in index.passages} for s in qs.sources if s):
            click.echo(f"Warning: no source chunk of the questions is among the chunks of {rag_src}: is it the "
                       "folder the dataset was generated from, with the same --chunk-size?", err=True)
        modes["rag"] = [index.search(p.question, rag_k) for p in pairs]
    if open_book:
        modes["open"] = [[s] if s else None for s in qs.sources]
        missing = sum(1 for s in qs.sources if s is None)
        if missing:
            click.echo(f"Warning: {missing} question(s) have no source chunk in the provenance; open book reports "
                       "them as failed.", err=True)
    judge = build(judge_model) if judge_model else None
    reports = []
    for role, name in [("model", model)] + ([("compare", compare_model)] if compare_model else []):
        prov = build(name)
        label = prov.describe().get("model")
        for mode, contexts in modes.items():
            done = [0]
            tag = label if mode == "closed" else f"{label} {mode}"

            def tick(item, tag=tag, done=done):
                done[0] += 1
                click.echo(f"[{tag}] {done[0]}/{len(pairs)}" + (" failed" if item.error else ""), err=True)

            rep = evaluate(pairs, prov, system_message=system_message, judge=judge,
                           concurrency=concurrency or prov.default_concurrency, on_item=tick, mode=mode,
                           contexts=contexts, splits=qs.splits, sources=keys)
            rep.role = role
            reports.append(rep)
    reports.append(echo_baseline(pairs, judge, qs.splits))
    json_path, md_path = write_reports(reports, report_prefix)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(140, Console().width))
    table = Table(title=f"eval on {', '.join(map(str, test_files))} ({len(pairs)} questions; averages over "
                  "answered questions)")
    table.add_column("model")
    for c in SUMMARY_COLUMNS:
        table.add_column(c, justify="right")
    from rich.markup import escape  # model names, paths and "[open book]" are text, not markup

    for row in summary_rows(reports):
        table.add_row(*map(escape, row))
    console.print(table)
    if len(modes) > 1:
        side = Table(title="closed book, RAG and open book, per split of the questions")
        for k, c in enumerate(SIDE_COLUMNS):
            side.add_column(c, justify="left" if k < 2 else "right")
        for row in side_rows(reports):
            side.add_row(*map(escape, row))
        console.print(side)
        rate, known = hit_rate(reports)
        if "rag" in modes:
            click.echo(f"Retrieval hit rate (source chunk among the top {rag_k}): "
                       + (f"{rate:.2f} over {known} questions" if rate is not None else
                          "unknown (no provenance beside TEST_FILE)"))
        for line in headlines(reports):
            click.echo(line)
    failed = reports[0].summary()["failed"]
    if failed:
        click.echo(f"{failed} question(s) failed for {reports[0].model} and are left out of its averages "
                   f"(see {md_path}).", err=True)
    click.echo(f"Reports: {json_path}, {md_path}")


def main() -> None:
    # SIGTERM (e.g. `kill`, a container stop) is handled like Ctrl+C: journal closed, exit 130
    def _term(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        pass
    cli()
