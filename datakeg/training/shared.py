"""What the torch and MLX backends share, so that both train on the same thing in the same order:
how a conversation becomes token ids and a loss mask, the batch order of each epoch, the step
count, the learning-rate schedule, and the checkpoint folders a ``--resume`` reads.

* ``encode``: the chat template's text (datakeg.support.chat_template: ChatML for a base model, the
  system message folded into the first user turn when the template refuses a system role, a fixed
  date) as ids, BOS first exactly once when the tokenizer wants one, EOS last, the loss on the last
  answer only.
* ``epoch_batches``: the rows of epoch E in an order that is a function of (seed, E) only, so a
  resumed run sees the batches an uninterrupted one would.
* Checkpoints: OUTPUT/checkpoints/step-N/ written atomically (a killed run never leaves half of
  one), the last two kept, and OUTPUT/checkpoints/best/ for the lowest validation loss. Each backend
  marks its own with a state file (``state.pt`` for torch, ``state.json`` for MLX), so one backend
  never resumes the other's checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError
from datakeg.support.chat_template import render, text_ids

STATE_FILES = {"torch": "state.pt", "mlx": "state.json"}


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels that train on every assistant turn (each
    answer of a multi-turn row, the template's end-of-turn marker included) and mask the rest
    (-100). BOS comes first when the tokenizer wants one (see datakeg.support.chat_template).
    Both backends train on exactly these ids and labels."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text encoded so far: each render must extend it
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True)
        full = render(tokenizer, messages[:k + 1])
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DatakegError("the chat template does not render the prompt as a prefix of the conversation",
                               "Use a base model whose chat template renders turns in order.")
        prompt_ids = text_ids(tokenizer, prompt[len(done):], first=not done)
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if k == last and tokenizer.eos_token_id is not None and (not answer_ids or answer_ids[-1] != tokenizer.eos_token_id):
            answer_ids = answer_ids + [tokenizer.eos_token_id]
        ids += prompt_ids + answer_ids
        labels += [-100] * len(prompt_ids) + answer_ids
        done = full
    return ids, labels


def check_lengths(encoded: list[tuple[list[int], list[int]]], max_length: int) -> int:
    """The longest row in tokens; refuses rows over MAX_LENGTH (they are never cut)."""
    longest = max(len(ids) for ids, _ in encoded)
    too_long = sum(1 for ids, _ in encoded if len(ids) > max_length)
    if too_long:
        raise ConfigError(f"{too_long} row(s) are longer than --max-length {max_length} tokens "
                          f"(the longest has {longest}).",
                          f"Raise --max-length to {longest} or more, or drop those rows.")
    return longest


def step_counts(train_rows: int, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps per epoch, total steps): whole batches only, as ``epoch_batches`` makes them."""
    per_epoch = max(1, train_rows // batch_size)
    return per_epoch, max(1, math.ceil(per_epoch * epochs))


def warmup_steps(total_steps: int) -> int:
    """Linear warm-up over the first tenth of the steps, then linear decay to 0 (both backends)."""
    return max(1, total_steps // 10)


def epoch_batches(rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The row order of an epoch, a function of (seed, epoch) only, so a resumed run sees the
    same batches as an uninterrupted one; a last partial batch is left out."""
    order = list(range(rows))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


# --------------------------------------------------------------------------- checkpoints
def list_checkpoints(root: Path, backend: str) -> list[Path]:
    """ROOT's complete step-N checkpoints written by BACKEND, oldest first."""
    found = []
    for p in Path(root).glob("step-*"):
        if p.is_dir() and (p / STATE_FILES[backend]).exists() and p.name[5:].isdigit():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[5:]))


def newest_checkpoint(root: Path, backend: str) -> Path:
    """The checkpoint ``--resume`` continues from, or a refusal that says why there is none."""
    found = list_checkpoints(root, backend)
    if found:
        return found[-1]
    others = [b for b in STATE_FILES if b != backend and list_checkpoints(root, b)]
    if others:
        raise ConfigError(f"--resume found only checkpoints written by --backend {others[0]} under {root}; "
                          f"--backend {backend} cannot continue them.",
                          f"Resume with --backend {others[0]}, or run without --resume to start afresh.")
    raise ConfigError(f"--resume found no checkpoint under {root}.",
                      "Run without --resume to start from the beginning.")


def check_resumable(checkpoint: Path, state: dict, total_steps: int, train_rows: int) -> None:
    if state["total_steps"] != total_steps or state["train_rows"] != train_rows:
        raise ConfigError(f"{checkpoint} was written by a run with {state['total_steps']} steps over "
                          f"{state['train_rows']} rows; this one has {total_steps} over {train_rows}.",
                          "Resume with the same data and --epochs/--batch-size, or start afresh without --resume.")


def atomic_dir(dest: Path, write) -> None:
    """DEST replaced by what WRITE puts in a fresh sibling folder (``DEST.tmp<pid>``), in one rename:
    an interrupted write leaves the previous DEST (or none), never half a folder. On any error
    (Ctrl+C included) the temporary folder is removed and DEST is left as it was. A process killed
    outright leaves its temporary folder, which :func:`remove_stale_dirs` clears on the next run."""
    atomic_dirs([(dest, write)])


def atomic_dirs(items) -> None:
    """:func:`atomic_dir` for several (DEST, WRITE) pairs: every WRITE runs (in order) into its
    temporary folder first, and only when all have succeeded is each DEST renamed into place, so an
    error in any of them leaves every DEST as it was."""
    pid = os.getpid()
    staged = []
    try:
        for dest, write in items:
            dest = Path(dest)
            tmp = dest.with_name(dest.name + f".tmp{pid}")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            staged.append((dest, tmp))
            write(tmp)
    except BaseException:
        for _, tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for dest, tmp in staged:
        old = dest.with_name(dest.name + f".old{pid}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old.exists():
            shutil.rmtree(old)


def remove_stale_dirs(folder: Path, names: tuple[str, ...]) -> None:
    """The ``NAME.tmp<pid>`` / ``NAME.old<pid>`` folders :func:`atomic_dir` leaves when its process is
    killed mid-save, for NAME in NAMES (``*`` patterns allowed), directly inside FOLDER: a temporary
    folder is removed; a previous version whose replacement never arrived is put back as NAME."""
    import re

    pattern = re.compile(r"(.+)\.(tmp|old)\d+")
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        m = pattern.fullmatch(p.name)
        if not (m and p.is_dir() and not p.is_symlink() and any(Path(m.group(1)).match(n) for n in names)):
            continue
        target = folder / m.group(1)
        if m.group(2) == "old" and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def start_state(state: dict | None, checkpoint: Path | None, ckpt_root: Path, total_steps: int, val_loss,
                progress) -> tuple[int, list, list, dict]:
    """(step, history, losses, best) where training starts: a checkpoint's, from its ``state`` (the
    backend loaded it and its weights), or step 0 of a fresh run, whose validation loss before
    training is measured (``val_loss()``) and whose folder loses the old checkpoints (another run's)."""
    if state is not None:
        step = state["step"]
        progress({"event": "resume", "step": step, "total": total_steps,
                  "message": f"resuming from {checkpoint} (step {step}/{total_steps})"})
        return step, state["history"], state["losses"], state["best"]
    if ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    v = val_loss()
    progress({"event": "eval", "step": 0, "val_loss": v})
    return 0, [{"step": 0, "val_loss": v}], [], {"step": 0, "val_loss": v}


def save_checkpoint(ckpt_root: Path, step: int, backend: str, write, progress) -> None:
    """Write checkpoint ``step-N`` whole or not at all (``write(tmp_folder)``), keep the last two."""
    atomic_dir(ckpt_root / f"step-{step}", write)
    prune_checkpoints(ckpt_root, backend)
    progress({"event": "checkpoint", "step": step, "message": f"checkpoint {ckpt_root / f'step-{step}'}"})


def epoch_end(step: int, total_steps: int, steps_per_epoch: int, losses: list, history: list, best: dict,
              val_loss, ckpt_root: Path, save_best, progress) -> tuple[dict, bool]:
    """After a step: at the end of an epoch, the validation loss goes into ``history`` and a new best
    adapter is kept in ``checkpoints/best`` (``save_best(tmp_folder)``). Returns the best so far and
    whether an epoch ended (the backend then writes a checkpoint)."""
    end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
    if end_of_epoch:
        v = val_loss()
        recent = losses[-steps_per_epoch:]
        history.append({"step": step, "train_loss": sum(recent) / len(recent), "val_loss": v})
        progress({"event": "eval", "step": step, "val_loss": v})
        if v < best["val_loss"]:
            best = {"step": step, "val_loss": v}
            atomic_dir(ckpt_root / "best", save_best)
    return best, end_of_epoch


def save_final(out: Path, ckpt_root: Path, best: dict, write_adapter, write_merged) -> dict:
    """``adapter/`` and ``merged/`` written beside their final names, then renamed into place (never
    half a folder; a failed merged save leaves the previous adapter/ too), and ``best.json``: the
    step validation picked and its adapter checkpoint, which is returned."""
    from datakeg.dataset.atomic import atomic_write_text

    atomic_dirs([(out / "adapter", write_adapter), (out / "merged", write_merged)])
    best_info = {"step": best["step"], "val_loss": best["val_loss"],
                 "adapter": str(ckpt_root / "best" / "adapter") if best["step"] else None}
    ckpt_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ckpt_root / "best.json", [json.dumps(best_info, indent=2)])
    return best_info


def prune_checkpoints(root: Path, backend: str, keep: int = 2) -> None:
    for old in list_checkpoints(root, backend)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def copy_tokenizer_files(base: Path, merged: Path) -> None:
    """The base's SentencePiece tokenizer.model into the merged folder: Ollama's safetensors import
    reads it for SentencePiece models (tokenizer.json alone is not enough)."""
    src = Path(base) / "tokenizer.model"
    if src.is_file() and not (Path(merged) / "tokenizer.model").exists():
        shutil.copy2(src, Path(merged) / "tokenizer.model")
