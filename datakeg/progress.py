"""Progress on the terminal for ``datakeg generate``: plain lines for logs and pipes, a rich bar
on an interactive terminal. Both are :class:`~datakeg.generation.callbacks.Callbacks`; the pipeline
never prints. Used by the CLI only."""

from __future__ import annotations

import sys

import click

from datakeg.support.secrets import scrub


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def planned_requests(plan, batch_size: int) -> int:
    """Requests the plan needs when every reply delivers what it asks for (backfill adds more)."""
    from datakeg.dataset.splits import SPLITS
    from datakeg.generation.planning import batches

    return sum(len(batches(target[split], batch_size)) for dp in plan.docs for target in dp.targets
               for split in SPLITS)


class LineReporter:
    """Plain line-based progress for logs and pipes: the plan, each document's start and end, and
    a request line (requests done/planned, pairs, elapsed, ETA) after a request when ``every``
    seconds have passed since the last one (every request when they are slow, as with the offline
    model). Called from worker threads: counters are updated under a lock."""

    def __init__(self, quiet: bool, batch_size: int = 15, every: float = 10.0):
        import threading
        import time

        self.quiet = quiet
        self.batch_size = max(1, int(batch_size or 15))
        self.every = every
        self.n = 0
        self.total = 0
        self.index: dict[str, int] = {}
        self.lock = threading.Lock()
        self.clock = time.monotonic
        self.started = self.clock()
        self.last_line = float("-inf")
        self.requests = 0
        self.planned = 0
        self.pairs = 0
        self.pairs_planned = 0
        self.tokens = 0

    def echo(self, msg: str) -> None:
        if not self.quiet:
            click.echo(scrub(msg), err=True)

    def on_message(self, message):
        self.echo(message)

    def on_plan(self, plan):
        self.total = len(plan.docs)
        self.planned = planned_requests(plan, self.batch_size)
        self.pairs_planned = plan.pairs
        self.started = self.clock()  # time the requests, not the model loading before them
        self.echo(f"{len(plan.docs)} file(s), {plan.chunks} chunk(s), {plan.pairs} pair(s) targeted, "
                  f"about {self.planned} request(s)")

    def on_document_start(self, dp):
        with self.lock:
            self.n += 1
            self.index[dp.doc.relpath] = self.n  # documents run in parallel: keep each one's number
            n = self.n
        self.echo(f"[{n}/{self.total}] {dp.doc.relpath}: {len(dp.chunks)} chunk(s), {dp.total} pair(s) targeted")

    def on_chunk_done(self, dp, chunk, accepted): ...

    def progress_line(self) -> str:
        elapsed = self.clock() - self.started
        planned = max(self.planned, self.requests)
        if self.requests and planned > self.requests:
            eta = duration(elapsed / self.requests * (planned - self.requests))
        else:
            eta = "-" if not self.requests else "0:00"
        return (f"requests {self.requests}/{planned}, pairs {self.pairs}/{self.pairs_planned}, "
                f"elapsed {duration(elapsed)}, ETA {eta}")

    def on_request(self, prompt_tokens, completion_tokens):
        with self.lock:
            self.requests += 1
            self.tokens += prompt_tokens + completion_tokens
            now = self.clock()
            due = now - self.last_line >= self.every
            if due:
                self.last_line = now
                line = self.progress_line()
        if due:
            self.echo(line)

    def on_pairs(self, accepted):
        with self.lock:
            self.pairs += accepted

    def on_document_done(self, dp, delivered):
        got = ", ".join(f"{k} {v}/{dp.by_split[k]}" for k, v in delivered.items())
        self.echo(f"[{self.index.get(dp.doc.relpath, self.n)}/{self.total}] {dp.doc.relpath}: done ({got})")

    def on_warning(self, message):
        self.echo(f"warning: {message}")

    def close(self): ...


class RichReporter(LineReporter):
    """A rich progress bar on stderr (requests with elapsed time and ETA, files, chunks, pairs) for
    interactive terminals."""

    def __init__(self, batch_size: int = 15):
        super().__init__(quiet=False, batch_size=batch_size)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
        )
        self.tasks = {}
        self.active: dict[str, None] = {}  # documents in flight, in start order
        self.last_done = ""

    def files_info(self) -> str:
        """What the files bar shows: the documents in flight (the oldest first, then how many more),
        or the last one finished when none is."""
        active = list(self.active)
        if not active:
            return f"last done: {self.last_done}" if self.last_done else ""
        more = f" (+{len(active) - 1} more in flight)" if len(active) > 1 else ""
        return f"{active[0]}{more}"

    def echo(self, msg):
        self.progress.console.print(scrub(msg), markup=False, highlight=False)

    def on_plan(self, plan):
        super().on_plan(plan)
        self.progress.start()
        self.tasks = {
            "requests": self.progress.add_task("requests", total=self.planned, info=""),
            "files": self.progress.add_task("files", total=len(plan.docs), info=""),
            "chunks": self.progress.add_task("chunks", total=plan.chunks, info=""),
            "pairs": self.progress.add_task("pairs", total=plan.pairs, info=""),
        }

    def on_document_start(self, dp):
        with self.lock:
            self.n += 1
            self.active[dp.doc.relpath] = None
            info = self.files_info()
        self.progress.update(self.tasks["files"], info=info)

    def on_chunk_done(self, dp, chunk, accepted):
        self.progress.advance(self.tasks["chunks"])

    def on_request(self, prompt_tokens, completion_tokens):
        with self.lock:
            self.requests += 1
            self.tokens += prompt_tokens + completion_tokens
            done, used = self.requests, self.tokens
        # backfill can need more requests than planned: the total grows with it
        self.progress.update(self.tasks["requests"], completed=done, total=max(self.planned, done),
                             info=f"{used:,} tokens")

    def on_pairs(self, accepted):
        super().on_pairs(accepted)
        self.progress.advance(self.tasks["pairs"], accepted)

    def on_document_done(self, dp, delivered):
        with self.lock:
            self.active.pop(dp.doc.relpath, None)
            self.last_done = dp.doc.relpath
            info = self.files_info()
        self.progress.update(self.tasks["files"], advance=1, info=info)

    def close(self):
        if self.tasks:
            self.progress.stop()


def reporter(quiet: bool, batch_size: int = 15):
    from datakeg.generation.callbacks import Callbacks

    base = RichReporter if (not quiet and sys.stderr.isatty()) else LineReporter
    cls = type("Reporter", (base, Callbacks), {})
    return cls(batch_size) if base is RichReporter else cls(quiet, batch_size)
