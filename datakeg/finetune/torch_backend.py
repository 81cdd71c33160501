"""LoRA fine-tuning with transformers + peft: chat template applied, loss on the answer only."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError
from datakeg.finetune import DEFAULT_CHAT_TEMPLATE, TORCH_HINT, FinetuneOptions


def _imports():
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise DatakegError(f"--backend torch needs {exc.name}, which is not installed.", TORCH_HINT) from None


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels masking everything but the last answer."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DatakegError("the chat template does not render the prompt as a prefix of the conversation",
                           "Use a base model whose chat template renders turns in order.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not answer_ids or answer_ids[-1] != tokenizer.eos_token_id):
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def train_torch(opts: FinetuneOptions, train: list, valid: list, progress) -> dict:
    _imports()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    progress({"event": "load", "message": f"loading {opts.base_model} on {device} ({str(dtype)[6:]})"})
    try:
        tokenizer = AutoTokenizer.from_pretrained(opts.base_model)
        model = AutoModelForCausalLM.from_pretrained(opts.base_model, dtype=dtype).to(device)
    except OSError as exc:
        raise DatakegError(f"cannot load --base-model {opts.base_model}: {exc}",
                           "Pass a local model folder or a Hugging Face id available offline.") from None
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def encode_all(rows):
        return [encode(tokenizer, c.messages) for c in rows]

    train_enc, valid_enc = encode_all(train), encode_all(valid)
    too_long = sum(1 for ids, _ in train_enc + valid_enc if len(ids) > opts.max_length)
    if too_long:
        longest = max(len(ids) for ids, _ in train_enc + valid_enc)
        raise ConfigError(f"{too_long} row(s) are longer than --max-length {opts.max_length} tokens "
                          f"(the longest has {longest}).",
                          f"Raise --max-length to {longest} or more, or drop those rows.")

    checkpointing = cuda if opts.gradient_checkpointing is None else opts.gradient_checkpointing
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=opts.lora_rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    def batches(data, shuffle):
        order = list(range(len(data)))
        if shuffle:
            rng.shuffle(order)
        for start in range(0, len(order) - opts.batch_size + 1 if shuffle else len(order), opts.batch_size):
            rows = [data[i] for i in order[start:start + opts.batch_size]]
            width = max(len(ids) for ids, _ in rows)
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
            yield input_ids, mask, labels

    steps_per_epoch = max(1, len(train_enc) // opts.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * opts.epochs))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.learning_rate)
    sched = get_linear_schedule_with_warmup(optim, max(1, total_steps // 10), total_steps)

    def val_loss() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for input_ids, mask, labels in batches(valid_enc, shuffle=False):
                losses.append(model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item())
        model.train()
        return sum(losses) / max(1, len(losses))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    step, history, started = 0, [], time.perf_counter()
    losses: list[float] = []
    while step < total_steps:
        for input_ids, mask, labels in batches(train_enc, shuffle=True):
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
            progress({"event": "step", "step": step, "total": total_steps, "loss": losses[-1]})
            if step % steps_per_epoch == 0 or step == total_steps:
                v = val_loss()
                history.append({"step": step, "train_loss": sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]),
                                "val_loss": v})
                progress({"event": "eval", "step": step, "val_loss": v})
            if step >= total_steps:
                break
    seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    out = Path(opts.output)
    progress({"event": "save", "message": f"saving the adapter and the merged model under {out}"})
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    merged = model.merge_and_unload()
    merged.save_pretrained(out / "merged", safe_serialization=True)
    tokenizer.save_pretrained(out / "merged")
    return {
        "device": device, "dtype": str(dtype).replace("torch.", ""), "gradient_checkpointing": bool(checkpointing),
        "steps": step, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / step, 4),
        "trainable_parameters": trainable, "parameters": total_params,
        "first_loss": losses[0], "final_loss": losses[-1], "history": history,
        "peak_gpu_memory_gib": round(peak, 3) if peak is not None else None,
        "adapter": str(out / "adapter"), "merged": str(out / "merged"),
    }
