"""The output folder: one writer at a time, the run fingerprint, fresh/resume decisions.

* **Lock.** A run holds an OS lock (``fcntl.flock`` on ``OUT/.datakeg/lock``) for its whole
  duration; the kernel releases it when the process dies, even on ``kill -9``. A second process
  that wants to write OUT gets :class:`OutputBusy` naming the holder (pid, command, start time).
* **Fingerprint.** ``OUT/.datakeg/run.json`` records what shapes the output (provider, model,
  settings). A rerun with the same fingerprint resumes; another is refused unless told
  ``resume`` (reuse matching requests) or ``fresh`` (forget the run).
* ``fresh`` deletes only files datakeg wrote, and only inside OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from datakeg.dataset.splits import SPLITS
from datakeg.dataset.writers import MANIFEST, REJECTS, atomic_write_json, per_file_path
from datakeg.errors import ConfigError, DatakegError, OutputBusy

STATE_DIR = ".datakeg"
RUN_FILE = "run.json"
CONVERT_FILE = "convert.json"  # in STATE_DIR of a folder `datakeg convert` wrote
LOCK_FILE = "lock"


class OutputLock:
    """``with OutputLock(out):`` holds the exclusive writer lock on OUT."""

    def __init__(self, out: Path, what: str = "generate"):
        self.out = Path(out)
        self.what = what
        self.fh = None

    def __enter__(self) -> OutputLock:
        state = self.out / STATE_DIR
        try:
            state.mkdir(parents=True, exist_ok=True)
            self.fh = open(state / LOCK_FILE, "a+", encoding="utf-8")
        except OSError as exc:
            raise DatakegError(f"cannot write to {self.out}: {exc.strerror or exc}",
                               "Choose an output folder you can write to.") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; a second writer is not detected
            return self
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another datakeg process"
            self.fh.close()
            self.fh = None
            raise OutputBusy(f"{self.out} is being written by {holder}.",
                             "Wait for that run to finish (or stop it), or choose another output folder.") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"datakeg {self.what} (pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(sys.argv[:6])[:200]})")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            try:
                self.fh.seek(0)
                self.fh.truncate()
            except OSError:
                pass
            self.fh.close()  # closing releases the flock (the file stays: unlinking it would let two
            self.fh = None  # processes lock two different files of the same name)


def remove_stale_temp_files(out: Path) -> int:
    """Temp files left by a killed writer (``.<name>.<random>.tmp``), inside OUT only (its state
    folder included). Call it holding the lock: no other writer's temp file is in flight."""
    n = 0
    for p in Path(out).rglob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _written_files(out: Path) -> list[Path]:
    """Files the run recorded in OUT wrote (per-file outputs from its manifest, merged files,
    manifest, rejects, provenance), never anything outside OUT. The dataset card (README.md) is not among them:
    it may hold the user's edits, and the next run rewrites it keeping them."""
    from datakeg.dataset.provenance import CHUNKS, PROVENANCE

    paths = [out / MANIFEST, out / REJECTS, out / PROVENANCE, out / CHUNKS] + [out / f"{s}.jsonl" for s in SPLITS]
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError):
            files = []
        for f in files:
            stem = f.get("output") if isinstance(f, dict) else None
            if isinstance(stem, str):
                paths += [per_file_path(out, stem, s) for s in SPLITS]
    return [p for p in paths if _inside(p, out) and p.resolve() != out.resolve()]


def _other_entries(out: Path) -> list[Path]:
    """What OUT holds besides datakeg's state folder and its own dataset card."""
    from datakeg.dataset.card import CARD, is_datakeg_card

    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name != STATE_DIR and not (p.name == CARD and is_datakeg_card(p))]


def convert_outputs(out: Path) -> list[str]:
    """The file names an earlier ``datakeg convert`` recorded writing in ``out`` (none when it did not)."""
    try:
        record = json.loads((Path(out) / STATE_DIR / CONVERT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    outputs = record.get("outputs") if isinstance(record, dict) else None
    return [n for n in outputs if isinstance(n, str)] if isinstance(outputs, list) else []


def refuse_foreign(out: Path, marks: tuple[str, ...] | None = None,
                   hint: str = "Choose a new or empty output folder.") -> None:
    """A non-empty folder datakeg did not write is never touched (checked before anything is written).
    ``marks``: paths inside OUT that show datakeg wrote it (default: a run's state or manifest;
    ``convert`` passes its own record, CONVERT_FILE)."""
    out = Path(out)
    marks = marks or (f"{STATE_DIR}/{RUN_FILE}", MANIFEST)
    if any((out / m).exists() for m in marks):
        return
    if _other_entries(out):
        raise ConfigError(f"{out} is not empty and was not written by datakeg.", hint)


def prepare_out(out: Path, fingerprint: dict, fresh: bool = False, resume: bool = False) -> str:
    """Decide what to do with an existing OUT (call it holding the lock). Returns "new", "resume"
    or "fresh".

    Same fingerprint as the run recorded in OUT: resume (finished calls are replayed). Different:
    refuse unless ``resume`` or ``fresh``. A non-empty folder that datakeg did not write is never
    touched.
    """
    out = Path(out)
    state = out / STATE_DIR
    run_file = state / RUN_FILE
    refuse_foreign(out)
    has_run = run_file.exists()
    mode = "new"
    if _other_entries(out) and not has_run:
        if not (fresh or resume):
            raise ConfigError(f"{out} holds output of an earlier datakeg run that cannot be resumed.",
                              "Pass --fresh to replace it, or choose another output folder.")
    if has_run:
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
        if fresh:
            mode = "fresh"
        elif previous == fingerprint or resume:
            mode = "resume"
        else:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            if "settings" in changed:
                old, new = previous.get("settings") or {}, fingerprint.get("settings") or {}
                changed.remove("settings")
                changed += sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"{out} holds a run with different settings ({', '.join(changed)} changed).",
                "Pass --resume to reuse the finished requests that still match (only changed work is redone), "
                "--fresh to start over, or choose another output folder.",
            )
    if fresh:
        for p in _written_files(out):
            p.unlink(missing_ok=True)
        for name in os.listdir(state) if state.is_dir() else []:
            if name != LOCK_FILE:
                target = state / name
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    atomic_write_json(run_file, fingerprint)
    return mode
