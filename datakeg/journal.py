"""Request-level journal: every finished model call, so a rerun never pays for it twice.

Each completed call is appended (one JSON line, flushed and fsynced) under a key derived from
everything that shapes its result: provider, model, sampling settings, prompt version, the exact
messages (chunk text, split, count, exclusions, language, format) and the call's ordinal within
its chunk and split. A rerun with the same inputs produces the same keys in the same order and
replays the stored replies instead of calling the model; a changed chunk produces new keys.
A line cut short by kill -9 is ignored on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

JOURNAL_DIR = ".datakeg"
JOURNAL = "journal.jsonl"


def request_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Journal:
    def __init__(self, out: Path):
        self.path = Path(out) / JOURNAL_DIR / JOURNAL
        self.entries: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.replayed = 0
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                        self.entries[entry["key"]] = entry
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn last line from a killed run
        self._fh = None

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict | None:
        entry = self.entries.get(key)
        if entry is not None:
            with self.lock:
                self.replayed += 1
        return entry

    def put(self, key: str, **record) -> None:
        entry = {"key": key, **record}
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self.lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # a torn last line must not glue onto the next record
                needs_newline = self.path.exists() and self.path.stat().st_size > 0 and \
                    not self.path.read_bytes()[-1:] == b"\n"
                self._fh = open(self.path, "a", encoding="utf-8")
                if needs_newline:
                    self._fh.write("\n")
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.entries[key] = entry

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


RUN_FILE = "run.json"


def prepare_out(out: Path, fingerprint: dict, fresh: bool = False, resume: bool = False) -> str:
    """Decide what to do with an existing OUT. Returns "new", "resume" or "fresh".

    Same settings as the run recorded in OUT: resume (finished calls are replayed). Different
    settings: refuse unless ``resume`` (reuse whatever calls still match) or ``fresh`` (forget the
    previous run). A non-empty folder that datakeg did not write is never touched.
    """
    import shutil

    from datakeg.errors import ConfigError
    from datakeg.writers import MANIFEST, REJECTS, SPLITS, atomic_write_json, per_file_path

    out = Path(out)
    state = out / JOURNAL_DIR
    run_file = state / RUN_FILE
    existing = out.exists() and any(out.iterdir())
    mode = "new"
    if existing and not state.is_dir():
        if not (out / MANIFEST).exists():
            raise ConfigError(f"{out} is not empty and was not written by datakeg.",
                              "Choose a new or empty output folder.")
        if not (fresh or resume):
            raise ConfigError(f"{out} holds output of an earlier datakeg run that cannot be resumed.",
                              "Pass --fresh to replace it, or choose another output folder.")
    if state.is_dir():
        previous = json.loads(run_file.read_text(encoding="utf-8")) if run_file.exists() else {}
        same = previous == fingerprint
        if fresh:
            mode = "fresh"
        elif same or resume:
            mode = "resume"
        else:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise ConfigError(
                f"{out} holds a run with different settings ({', '.join(changed)} changed).",
                "Pass --resume to reuse the finished requests that still match (only changed work is redone), "
                "--fresh to start over, or choose another output folder.",
            )
    if fresh and existing:
        manifest = out / MANIFEST
        if manifest.exists():
            for f in json.loads(manifest.read_text(encoding="utf-8")).get("files", []):
                for split in SPLITS:
                    per_file_path(out, f["output"], split).unlink(missing_ok=True)
        for name in [MANIFEST, REJECTS] + [f"{s}.jsonl" for s in SPLITS]:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    atomic_write_json(run_file, fingerprint)
    return mode
