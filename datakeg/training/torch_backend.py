"""LoRA fine-tuning with transformers + peft: chat template applied, loss on the answer only.

A run survives interruption: OUTPUT/checkpoints/step-N/ (adapter, optimizer, scheduler, step, RNG
states; the folder layout and row encoding are datakeg.training.shared's, as for MLX) is written
every ``--save-every`` steps and at the end of each epoch, atomically (a killed
run never leaves half a checkpoint); ``--resume`` continues from the newest one with the same data
order, so a resumed run ends where an uninterrupted one would. The adapter with the lowest
validation loss is kept in OUTPUT/checkpoints/best/ (validation runs before training and after each
epoch). Before training, the memory the run needs is estimated against this machine's RAM (or the
GPU's free memory): gradient checkpointing is turned on when only it makes the run fit, and a run
that cannot fit is refused with the numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError
from datakeg.support.chat_template import ensure_chat_template
from datakeg.training.options import TORCH_HINT, FinetuneOptions
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

GIB = 2**30


def _imports():
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise DatakegError(f"--backend torch needs {exc.name}, which is not installed.", TORCH_HINT) from None


# --------------------------------------------------------------------------- memory
def estimate_memory(config, parameters: int, batch: int, tokens: int, param_bytes: int, checkpointing: bool) -> float:
    """Bytes a LoRA step needs (weights, logits and the loss's copies, activations kept for the
    backward pass). Calibrated on a Qwen2.5-0.5B-shaped model, fp32 on the CPU, LoRA r8: batch 4 x
    128 tokens measured 7 GB (estimate 7.1); 4 x 1024 measured 13 GB with checkpointing (estimate
    15.3) and more than 24 GB without (estimate 51)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(cfg, "hidden_size", 1024)
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    layers = getattr(cfg, "num_hidden_layers", 12)
    heads = getattr(cfg, "num_attention_heads", 8)
    vocab = getattr(cfg, "vocab_size", 32000)
    act = param_bytes
    n = batch * tokens
    logits = n * vocab * 4 * 3  # fp32 logits, log-softmax, gradient
    per_token_layer = hidden * act * 12 + inter * act * 4 + heads * tokens * act * 3
    layer_acts = (layers * n * hidden * act + n * per_token_layer) if checkpointing else layers * n * per_token_layer
    return (parameters * param_bytes + logits + layer_acts) * 1.3 + GIB


def available_memory(cuda: bool) -> tuple[float, str]:
    """(bytes, what they are): free GPU memory with CUDA, total RAM otherwise. DATAKEG_MEMORY_GB
    overrides (to plan for another machine, and for tests)."""
    if os.environ.get("DATAKEG_MEMORY_GB"):
        return float(os.environ["DATAKEG_MEMORY_GB"]) * GIB, "DATAKEG_MEMORY_GB"
    if cuda:
        import torch

        free, _total = torch.cuda.mem_get_info()
        # the base model is on the GPU already and the estimate counts its weights: add them back
        return float(free + torch.cuda.memory_allocated()), "free GPU memory"
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"


def plan_memory(opts: FinetuneOptions, config, parameters: int, param_bytes: int, tokens: int, cuda: bool,
                progress) -> tuple[bool, dict]:
    """Whether to use gradient checkpointing, and the estimate; refuses a run that will not fit."""
    have, what = available_memory(cuda)
    without = estimate_memory(config, parameters, opts.batch_size, tokens, param_bytes, False)
    with_ckpt = estimate_memory(config, parameters, opts.batch_size, tokens, param_bytes, True)
    info = {"estimate_gib": None, "available_gib": round(have / GIB, 1), "available": what,
            "longest_row_tokens": tokens}
    usable = have * 0.9
    if opts.gradient_checkpointing is None:
        checkpointing = cuda or without > usable
    else:
        checkpointing = opts.gradient_checkpointing
    need = with_ckpt if checkpointing else without
    info["estimate_gib"] = round(need / GIB, 1)
    if need > usable:
        hint = ("Lower --batch-size or --max-length (the longest rows set the padded width), or use a machine "
                "with more memory.")
        if not checkpointing:
            hint = "Drop --no-gradient-checkpointing (it would need about " \
                   f"{with_ckpt / GIB:.1f} GiB), or lower --batch-size or --max-length."
        raise ConfigError(
            f"this run needs about {need / GIB:.1f} GiB (batch {opts.batch_size} x {tokens} tokens, "
            f"gradient checkpointing {'on' if checkpointing else 'off'}) but this machine has "
            f"{have / GIB:.1f} GiB ({what}).", hint)
    if checkpointing and opts.gradient_checkpointing is None and not cuda:
        progress({"event": "load", "message": f"gradient checkpointing on: without it the run needs about "
                                              f"{without / GIB:.1f} GiB of {have / GIB:.1f} GiB ({what})"})
    progress({"event": "load", "message": f"memory estimate {need / GIB:.1f} GiB of {have / GIB:.1f} GiB ({what})"})
    return checkpointing, info


# --------------------------------------------------------------------------- training
def train_torch(opts: FinetuneOptions, train: list, valid: list, progress) -> dict:
    _imports()
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    torch.manual_seed(opts.seed)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    out = Path(opts.output)
    ckpt_root = out / "checkpoints"
    resume_from = newest_checkpoint(ckpt_root, "torch") if opts.resume else None
    progress({"event": "load", "message": f"loading {opts.base_model} on {device} ({str(dtype)[6:]})"})
    try:
        tokenizer = AutoTokenizer.from_pretrained(opts.base_model)
        model = AutoModelForCausalLM.from_pretrained(opts.base_model, dtype=dtype).to(device)
    except OSError as exc:
        raise DatakegError(f"cannot load --base-model {opts.base_model}: {exc}",
                           "Pass a local model folder or a Hugging Face id available offline.") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def encode_all(rows):
        return [encode(tokenizer, c.messages) for c in rows]

    train_enc, valid_enc = encode_all(train), encode_all(valid)
    longest = check_lengths(train_enc + valid_enc, opts.max_length)

    total_params = sum(p.numel() for p in model.parameters())
    checkpointing, memory = plan_memory(opts, model.config, total_params, 2 if cuda else 4, longest, cuda, progress)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    def batch_tensors(rows):
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
        return input_ids, mask, labels

    steps_per_epoch, total_steps = step_counts(len(train_enc), opts.batch_size, opts.epochs)
    save_every = opts.save_every if opts.save_every and opts.save_every > 0 else None
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.learning_rate)
    sched = get_linear_schedule_with_warmup(optim, warmup_steps(total_steps), total_steps)

    def val_loss() -> float:
        model.eval()
        tokens = loss_sum = 0.0
        with torch.no_grad():
            for start in range(0, len(valid_enc), opts.batch_size):
                input_ids, mask, labels = batch_tensors(valid_enc[start:start + opts.batch_size])
                n = float((labels[:, 1:] != -100).sum())
                loss_sum += model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item() * n
                tokens += n
        model.train()
        return loss_sum / max(1.0, tokens)

    state = None
    if resume_from is not None:
        from safetensors.torch import load_file

        state = torch.load(resume_from / "state.pt", map_location=device, weights_only=False)
        check_resumable(resume_from, state, total_steps, len(train_enc))
        set_peft_model_state_dict(model, load_file(str(resume_from / "adapter" / "adapter_model.safetensors")))
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
    step, history, losses, best = start_state(state, resume_from, ckpt_root, total_steps, val_loss, progress)

    def checkpoint() -> None:
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp / "adapter")
            torch.save({"step": step, "total_steps": total_steps, "train_rows": len(train_enc),
                        "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state() if cuda else None,
                        "history": history, "losses": losses, "best": best}, tmp / "state.pt")

        save_checkpoint(ckpt_root, step, "torch", write, progress)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    started, first_step = time.perf_counter(), step
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        for rows in epoch_batches(len(train_enc), opts.batch_size, opts.seed, epoch)[offset:]:
            input_ids, mask, labels = batch_tensors([train_enc[i] for i in rows])
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise DatakegError(f"the training loss became {loss.item()} at step {step + 1}",
                                   "Lower --learning-rate.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            per_step = (time.perf_counter() - started) / (step - first_step)
            progress({"event": "step", "step": step, "total": total_steps, "loss": losses[-1],
                      "seconds_per_step": per_step, "eta_seconds": per_step * (total_steps - step)})
            best, end_of_epoch = epoch_end(step, total_steps, steps_per_epoch, losses, history, best, val_loss,
                                           ckpt_root, lambda tmp: model.save_pretrained(tmp / "adapter"), progress)
            if end_of_epoch or (save_every and step % save_every == 0):
                checkpoint()
            if step >= total_steps:
                break
    seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else None

    progress({"event": "save", "message": f"saving the adapter and the merged model under {out}"})

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    def write_merged(tmp: Path) -> None:
        merged = model.merge_and_unload()  # after the adapter was saved
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        copy_tokenizer_files(Path(opts.base_model), tmp)

    best_info = save_final(out, ckpt_root, best, write_adapter, write_merged)
    done_now = step - first_step
    return {
        "device": device, "dtype": str(dtype).replace("torch.", ""), "gradient_checkpointing": bool(checkpointing),
        "memory": memory, "steps": step, "resumed_from_step": first_step if resume_from is not None else None,
        "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, done_now), 4),
        "trainable_parameters": trainable, "parameters": total_params,
        "first_loss": losses[0], "final_loss": losses[-1], "history": history, "best": best_info,
        "peak_gpu_memory_gib": round(peak, 3) if peak is not None else None,
        "adapter": str(out / "adapter"), "merged": str(out / "merged"), "checkpoints": str(ckpt_root),
    }
