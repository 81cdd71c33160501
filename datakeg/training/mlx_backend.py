"""LoRA fine-tuning with MLX (Apple Silicon, or a Linux CPU with mlx-lm[cpu]), on the same terms as
the torch backend.

mlx-lm supplies the model loading, the LoRA layers, fusing and saving; the training loop is
datakeg's, because mlx-lm's own ``train`` cannot resume (it restarts the step count and the
optimizer, and its batch order is not reproducible from a step) and its ``ChatDataset`` renders the
chat template without the BOS a Gemma or Llama base expects and without folding a refused system
turn. So here, as in datakeg.training.torch_backend:

* rows become ids with ``datakeg.training.shared.encode`` (BOS exactly once at the start when the
  tokenizer wants one, the system message folded into the first user turn when the template
  refuses a system role), the loss covers the last answer only;
* batches follow ``epoch_batches`` (seed, epoch); AdamW with bias correction, weight decay 0.01,
  linear warm-up over a tenth of the steps then linear decay, gradients clipped to norm 1;
* validation before training and after each epoch, the lowest kept in OUTPUT/checkpoints/best/;
* OUTPUT/checkpoints/step-N/ (adapter, optimizer state with its step, history) every
  ``--save-every`` steps and at each epoch end, atomically; ``--resume`` continues from the newest
  one. Dropout draws from a seed fixed per step, so a resumed run ends with the weights an
  uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from datakeg.errors import DatakegError
from datakeg.support.chat_template import ensure_chat_template
from datakeg.training.options import MLX_HINT, FinetuneOptions
from datakeg.training.shared import (
    check_lengths,
    check_resumable,
    copy_tokenizer_files,
    encode,
    epoch_batches,
    epoch_end,
    newest_checkpoint,
    save_checkpoint,
    save_final,
    start_state,
    step_counts,
    warmup_steps,
)

ADAPTER_FILE = "adapters.safetensors"  # the name mlx_lm.load(adapter_path=...) reads


def encode_rows(tokenizer, rows: list) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per conversation, exactly the torch backend's: labels are -100 where the loss
    does not count (prompts, every user turn) and the token where it does (every answer)."""
    return [encode(tokenizer, conv.messages) for conv in rows]


def batch_arrays(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """A padded batch and its mask, as mx arrays: the mask is 1 where the loss counts, 0 on the
    prompt and user turns, -1 on padding."""
    import mlx.core as mx
    import numpy as np

    width = max(len(ids) for ids, _ in rows)
    arr = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.full((len(rows), width), -1, dtype=np.int8)
    for i, (ids, labels) in enumerate(rows):
        arr[i, :len(ids)] = ids
        mask[i, :len(ids)] = [0 if lab == -100 else 1 for lab in labels]
    return mx.array(arr), mx.array(mask)


def masked_loss(model, batch, mask):
    """Mean cross-entropy over the answer tokens only, as torch's labels count them (mlx-lm's
    ``default_loss`` trains on the last answer only, and also counts the first padding position
    after each row)."""
    import mlx.core as mx
    from mlx import nn

    logits = model(batch[:, :-1])
    targets = batch[:, 1:]
    counted = (mask[:, 1:] == 1).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, targets) * counted
    ntoks = counted.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


def train_mlx(opts: FinetuneOptions, train: list, valid: list, progress) -> dict:
    try:
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx import nn
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm import load
        from mlx_lm.tuner.trainer import grad_checkpoint
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import save
    except ImportError as exc:
        raise DatakegError(f"--backend mlx needs {exc.name}, which is not installed.", MLX_HINT) from None

    out = Path(opts.output)
    ckpt_root = out / "checkpoints"
    resume_from = newest_checkpoint(ckpt_root, "mlx") if opts.resume else None  # refused before loading
    mx.random.seed(opts.seed)
    device = str(mx.default_device())
    progress({"event": "load", "message": f"loading {opts.base_model} with MLX on {device}"})
    try:
        model, tokenizer, config = load(opts.base_model, return_config=True)
    except Exception as exc:  # noqa: BLE001  mlx-lm raises several kinds for a missing or unsupported model
        raise DatakegError(f"cannot load --base-model {opts.base_model} with mlx-lm: {exc}",
                           "Pass a local model folder (Hugging Face format) of an architecture mlx-lm supports.") from None
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    ensure_chat_template(hf_tok)
    pad_id = next((t for t in (hf_tok.pad_token_id, hf_tok.eos_token_id) if t is not None), 0)

    train_enc, valid_enc = encode_rows(hf_tok, train), encode_rows(hf_tok, valid)
    longest = check_lengths([(ids, None) for ids, _ in train_enc + valid_enc], opts.max_length)

    model.freeze()
    lora_parameters = {"rank": opts.lora_rank, "scale": opts.lora_alpha / opts.lora_rank, "dropout": opts.lora_dropout}
    num_layers = len(model.layers)
    linear_to_lora_layers(model, num_layers, lora_parameters)
    if opts.gradient_checkpointing:
        grad_checkpoint(model.layers[0])
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    parameters = sum(v.size for _, v in tree_flatten(model.parameters()))
    adapter_config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora_parameters,
                      "model": opts.base_model}

    steps_per_epoch, total_steps = step_counts(len(train_enc), opts.batch_size, opts.epochs)
    warm = warmup_steps(total_steps)
    schedule = optim.join_schedules([optim.linear_schedule(0.0, opts.learning_rate, warm),
                                     optim.linear_schedule(opts.learning_rate, 0.0, max(1, total_steps - warm))],
                                    [warm])
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01, bias_correction=True)
    save_every = opts.save_every if opts.save_every and opts.save_every > 0 else None
    loss_and_grad = nn.value_and_grad(model, masked_loss)

    def val_loss() -> float:
        model.eval()
        tokens = loss_sum = 0.0
        for start in range(0, len(valid_enc), opts.batch_size):
            loss, n = masked_loss(model, *batch_arrays(valid_enc[start:start + opts.batch_size], pad_id))
            loss_sum += loss.item() * n.item()
            tokens += n.item()
        model.train()
        return loss_sum / max(1.0, tokens)

    def write_adapter(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(folder / ADAPTER_FILE), dict(tree_flatten(model.trainable_parameters())))
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")

    state = None
    if resume_from is not None:
        state = json.loads((resume_from / "state.json").read_text(encoding="utf-8"))
        check_resumable(resume_from, state, total_steps, len(train_enc))
        model.load_weights(list(mx.load(str(resume_from / "adapter" / ADAPTER_FILE)).items()), strict=False)
        optimizer.state = tree_unflatten(list(mx.load(str(resume_from / "optimizer.safetensors")).items()))
    step, history, losses, best = start_state(state, resume_from, ckpt_root, total_steps, val_loss, progress)

    def checkpoint() -> None:
        def write(tmp: Path) -> None:
            write_adapter(tmp / "adapter")
            mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
            (tmp / "state.json").write_text(json.dumps({
                "backend": "mlx", "step": step, "total_steps": total_steps, "train_rows": len(train_enc),
                "history": history, "losses": losses, "best": best}, indent=2), encoding="utf-8")

        save_checkpoint(ckpt_root, step, "mlx", write, progress)

    model.train()
    started, first_step = time.perf_counter(), step
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        for rows in epoch_batches(len(train_enc), opts.batch_size, opts.seed, epoch)[offset:]:
            mx.random.seed(opts.seed * 1_000_003 + step)  # dropout's draws: a function of the step only
            (loss, _), grads = loss_and_grad(model, *batch_arrays([train_enc[i] for i in rows], pad_id))
            grads, _ = optim.clip_grad_norm(grads, 1.0)
            optimizer.update(model, grads)
            mx.eval(model.parameters(), optimizer.state, loss)
            value = loss.item()
            if not math.isfinite(value):
                raise DatakegError(f"the training loss became {value} at step {step + 1}", "Lower --learning-rate.")
            step += 1
            losses.append(value)
            per_step = (time.perf_counter() - started) / (step - first_step)
            progress({"event": "step", "step": step, "total": total_steps, "loss": value,
                      "seconds_per_step": per_step, "eta_seconds": per_step * (total_steps - step)})
            best, end_of_epoch = epoch_end(step, total_steps, steps_per_epoch, losses, history, best, val_loss,
                                           ckpt_root, lambda tmp: write_adapter(tmp / "adapter"), progress)
            if end_of_epoch or (save_every and step % save_every == 0):
                checkpoint()
            if step >= total_steps:
                break
    seconds = time.perf_counter() - started

    progress({"event": "save", "message": f"saving the adapter and fusing it into {out / 'merged'}"})
    def write_merged(tmp: Path) -> None:
        fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]  # after the adapter
        if fused:
            model.update_modules(tree_unflatten(fused))
        save(tmp, opts.base_model, model, tokenizer, config, donate_model=False)
        copy_tokenizer_files(Path(opts.base_model), tmp)

    best_info = save_final(out, ckpt_root, best, write_adapter, write_merged)
    done_now = step - first_step
    return {
        "device": device, "dtype": str(next(v for _, v in tree_flatten(model.parameters())).dtype).split(".")[-1],
        "gradient_checkpointing": bool(opts.gradient_checkpointing), "longest_row_tokens": longest,
        "steps": step, "resumed_from_step": first_step if resume_from is not None else None,
        "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, done_now), 4),
        "trainable_parameters": int(trainable), "parameters": int(parameters),
        "first_loss": losses[0], "final_loss": losses[-1], "history": history, "best": best_info,
        "adapter": str(out / "adapter"), "merged": str(out / "merged"), "checkpoints": str(ckpt_root),
    }
