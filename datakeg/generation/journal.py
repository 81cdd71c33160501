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
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()  # a lone surrogate is no crash


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
        """The stored reply for ``key``, handed out once: a key is asked for once per run (it holds
        the call's ordinal), so a replayed entry leaves memory as it is used."""
        with self.lock:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self.replayed += 1
        return entry

    def put(self, key: str, **record) -> None:
        from datakeg.dataset.jsonl import dumps_line

        line = dumps_line({"key": key, **record}) + "\n"  # one line whatever the reply holds (lone surrogates escaped)
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
            # not kept in memory: this run never asks for the same key again (a rerun reads the file);
            # at 100k pairs the replies would hold a few hundred MB

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
