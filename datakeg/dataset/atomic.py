"""Crash-safe files and folders: written to a temp file (or folder) beside the target, fsynced, then
renamed into place, so a crash or Ctrl+C never leaves a half-written file behind.

Modes follow ``open()``: a new file gets 0o666 less the process umask (``mkstemp`` alone would
leave 0o600, unreadable to the rest of a team or a container's other users), a replaced file keeps
the mode it had; a new folder gets 0o777 less the umask."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

_umask: int | None = None
_umask_lock = threading.Lock()


def process_umask() -> int:
    """The process umask, read once. Linux reports it in /proc/self/status without changing it;
    elsewhere it is read by setting and restoring it (under a lock, once per process)."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = _read_umask()
        return _umask


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the existing file's, or 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~process_umask()


def atomic_write_text(path: Path, chunks: Iterable[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class AtomicFolder:
    """``with AtomicFolder(dst) as tmp:`` write the folder's files into ``tmp`` (a new folder beside
    ``dst``); on success they are moved into ``dst``, on any error (Ctrl+C included) ``tmp`` is
    removed and ``dst`` is left as it was.

    A ``dst`` that does not exist (or is empty) is replaced by ``tmp`` in one rename: it appears
    whole or not at all. Into an existing folder the finished files are moved one by one (each
    rename is atomic): a crash during those renames can leave some files new and some old, each
    whole; entries of ``dst`` with other names are left alone, except those named in ``superseded``
    (files an earlier version of this folder wrote): they are removed when the new version does not
    write them, so that no stale output of an earlier run stays beside the new one."""

    def __init__(self, dst: Path, superseded: Iterable[str] = ()):
        self.dst = Path(dst)
        self.superseded = list(superseded)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.dst.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}.", suffix=".tmp", dir=parent))
        os.chmod(self.tmp, 0o777 & ~process_umask())  # mkdtemp's 0o700 would stay after the rename
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        tmp = self.tmp
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            if self.dst.is_dir() and not any(self.dst.iterdir()):
                self.dst.rmdir()
            if not self.dst.exists():
                os.rename(tmp, self.dst)
                return
            written = {p.name for p in tmp.iterdir()}
            for entry in sorted(tmp.rglob("*"), key=lambda p: len(p.parts)):
                target = self.dst / entry.relative_to(tmp)
                if entry.is_dir():
                    target.mkdir(exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(entry, target)
            for name in self.superseded:
                stale = self.dst / name
                if (Path(name).name == name and name not in written and stale.is_file()
                        and not stale.is_symlink()):
                    stale.unlink()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
