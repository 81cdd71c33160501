"""Fine-tune a small model on a datakeg output folder, then export it for Ollama.

Backends: ``mlx`` (mlx-lm, for Apple Silicon; it also runs on a Linux CPU with ``mlx-lm[cpu]``, about
40x slower than torch there, so it is never proposed on Linux) and ``torch`` (transformers + peft
LoRA; CUDA with bf16 and gradient checkpointing, or fp32 on the CPU for small models). Both train on
the same token ids in the same batch order with the same schedule, checkpoints and ``--resume``
(datakeg.training.shared). Every row format datakeg writes is accepted; reasoning rows train the
model to answer with ``<think>reasoning</think>`` first.
"""

from __future__ import annotations

import platform
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError
from datakeg.support.chat_template import DEFAULT_CHAT_TEMPLATE  # noqa: F401  (re-exported)
from datakeg.training.options import MLX_HINT, TORCH_HINT, FinetuneOptions  # noqa: F401  (re-exported)


def pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mlx"
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    raise ConfigError(
        "--backend auto found no CUDA GPU for PyTorch (and MLX is for Apple Silicon only).",
        "For a small model (up to about 0.5B parameters) pass --backend torch to train on this CPU in fp32 "
        "(slow: seconds per step); for anything larger use a machine with an NVIDIA GPU and a CUDA build "
        "of torch. " + TORCH_HINT,
    )


def load_conversations(path: Path, system_message: str | None = None) -> list:
    """Rows of any datakeg format as conversations; reasoning goes into the answer as <think>."""
    from datakeg.dataset.conversion import iter_rows
    from datakeg.dataset.records import (
        Conversation,
        ShapeError,
        detect_shape,
        to_conversation,
    )

    convs = []
    for lineno, value, error in iter_rows(path):
        if error:
            raise DatakegError(f"{path} line {lineno}: {error}", "Run `datakeg validate` on the folder.")
        try:
            conv = to_conversation(value, detect_shape(value))
        except ShapeError as exc:
            raise DatakegError(f"{path} line {lineno}: {exc}", "Run `datakeg validate` on the folder.") from None
        messages = [dict(m) for m in conv.messages]
        if system_message and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_message})
        if conv.reasoning:
            messages[-1]["content"] = f"<think>{conv.reasoning}</think>\n{messages[-1]['content']}"
        convs.append(Conversation(messages))
    return convs


def load_splits(opts: FinetuneOptions) -> tuple[list, list]:
    data = Path(opts.data)
    train_path, valid_path = data / "train.jsonl", data / "valid.jsonl"
    for p in (train_path, valid_path):
        if not p.exists():
            raise DatakegError(f"{p} is missing.", "Point finetune at a datakeg output folder (datakeg generate).")
    train = load_conversations(train_path, opts.system_message)
    valid = load_conversations(valid_path, opts.system_message)
    for name, rows in (("train", train), ("valid", valid)):
        if len(rows) < opts.batch_size:
            raise ConfigError(
                f"{name}.jsonl has {len(rows)} row(s), fewer than --batch-size {opts.batch_size}.",
                f"Lower --batch-size to {max(1, len(rows))} or generate more pairs (--pairs-per-1k).",
            )
    return train, valid


MARK = ".datakeg/finetune.json"  # inside OUTPUT: written by datakeg finetune before it writes anything else
RESULT = "finetune.json"
FINAL_FOLDERS = ("adapter", "merged", "ollama")


def check_output(opts: FinetuneOptions) -> None:
    """OUTPUT must be new, empty, or a folder datakeg finetune wrote (its mark, or the finetune.json of
    a run from before the mark existed), unless ``opts.force``. Checked before anything is written."""
    from datakeg.dataset.outdir import refuse_foreign

    out = Path(opts.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; finetune writes a folder there.", "Choose a folder name for -o/--output.")
    if not opts.force:
        refuse_foreign(out, marks=(MARK, RESULT),
                       hint="Choose a new or empty folder for -o/--output, or pass --force to write adapter/, "
                            "merged/, checkpoints/ and finetune.json there (each replaces an entry of the same "
                            "name; nothing else is touched).")


def mark_output(opts: FinetuneOptions) -> None:
    """Record in OUTPUT that datakeg finetune writes it (so a rerun or --resume is not refused), and
    clear the temporary folders a killed save left there."""
    import json
    import time

    from datakeg.dataset.atomic import atomic_write_text
    from datakeg.training.shared import remove_stale_dirs

    out = Path(opts.output)
    record = {"command": "finetune", "data": str(opts.data), "base_model": opts.base_model,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(out / MARK, [json.dumps(record, indent=2) + "\n"])
    remove_stale_dirs(out, FINAL_FOLDERS)
    remove_stale_dirs(out / "checkpoints", ("step-*", "best"))


def finetune(opts: FinetuneOptions, progress=lambda event: None) -> dict:
    """Train and write OUTPUT/adapter and OUTPUT/merged. Returns a summary (also OUTPUT/finetune.json).

    OUTPUT must be new, empty or written by an earlier finetune (else ``opts.force``); adapter/,
    merged/ and finetune.json are each written beside their final name and renamed into place."""
    import json

    from datakeg.dataset.atomic import atomic_write_text

    check_output(opts)
    backend = pick_backend(opts.backend)
    train, valid = load_splits(opts)
    if backend == "torch":
        from datakeg.training.torch_backend import train_torch as run
    elif backend == "mlx":
        from datakeg.training.mlx_backend import train_mlx as run
    else:
        raise ConfigError(f"unknown --backend {backend!r}", "Choose auto, mlx or torch.")
    mark_output(opts)
    result = run(opts, train, valid, progress)
    result = {"backend": backend, "options": opts.to_dict(), "train_rows": len(train), "valid_rows": len(valid),
              **result}
    atomic_write_text(Path(opts.output) / RESULT, [json.dumps(result, indent=2)])
    return result
