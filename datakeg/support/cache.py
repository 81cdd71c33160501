"""Where datakeg keeps what it computes once (``DATAKEG_CACHE_DIR``, else the user cache
directory) and how it keeps third-party libraries (transformers, torch, huggingface_hub) quiet.
Shared by the offline model, the semantic dedupe model and the trainers."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

_THIRD_PARTY = r"(transformers|torch|peft|accelerate|huggingface_hub|gguf|tokenizers|safetensors)(\..*)?$"


def verbose_default() -> bool:
    """``DATAKEG_VERBOSE=1`` (what ``datakeg generate --verbose`` sets) shows third-party output."""
    return os.environ.get("DATAKEG_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def quiet_third_party() -> None:
    """Silence what transformers, huggingface_hub, torch and peft print on their own: the
    "Loading weights" and GGUF conversion progress bars, info/warning logging and
    Future/Deprecation/User warnings. datakeg reports its own progress; ``--verbose`` keeps theirs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    warnings.filterwarnings("ignore", category=FutureWarning)  # often attributed to the caller's line
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - the [local] extra is missing; check() says so
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:  # the GGUF de-quantization bar is a bare tqdm that the switches above do not reach
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from tqdm.auto import tqdm

        gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    except (ImportError, AttributeError):  # pragma: no cover - another transformers layout
        pass



def cache_dir() -> Path:
    """The one datakeg cache: ``DATAKEG_CACHE_DIR``, else the user cache directory."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("DATAKEG_CACHE_DIR") or user_cache_dir("datakeg"))


