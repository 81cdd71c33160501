"""LoRA fine-tuning with the mlx-lm Python API (Apple Silicon, or Linux CPU with mlx-lm[cpu])."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from datakeg.errors import ConfigError, DatakegError
from datakeg.support.chat_template import ensure_chat_template
from datakeg.training.options import MLX_HINT, FinetuneOptions


def per_answer(rows: list) -> list[dict]:
    """mlx-lm's ChatDataset trains on the last assistant turn only (it masks everything before
    it), so a multi-turn conversation becomes one example per assistant turn: the conversation up
    to that answer. Every answer is trained on; a single-turn row stays one example."""
    return [{"messages": [dict(m) for m in c.messages[:k + 1]]} for c in rows
            for k, m in enumerate(c.messages) if m["role"] == "assistant"]


def train_mlx(opts: FinetuneOptions, train: list, valid: list, progress) -> dict:
    try:
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm import load
        from mlx_lm.tuner.callbacks import TrainingCallback
        from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
        from mlx_lm.tuner.trainer import TrainingArgs
        from mlx_lm.tuner.trainer import train as mlx_train
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import save
    except ImportError as exc:
        raise DatakegError(f"--backend mlx needs {exc.name}, which is not installed.", MLX_HINT) from None

    if opts.resume:
        raise ConfigError("--resume is supported by --backend torch only.",
                          "Run the mlx backend without --resume, or use --backend torch.")
    mx.random.seed(opts.seed)
    progress({"event": "load", "message": f"loading {opts.base_model} with MLX on {mx.default_device()}"})
    try:
        model, tokenizer, config = load(opts.base_model, return_config=True)
    except Exception as exc:  # mlx-lm raises several kinds for a missing or unsupported model
        raise DatakegError(f"cannot load --base-model {opts.base_model} with mlx-lm: {exc}",
                           "Pass a local model folder (Hugging Face format) of an architecture mlx-lm supports.") from None
    hf_tok = getattr(tokenizer, "_tokenizer", tokenizer)
    ensure_chat_template(hf_tok)

    def dataset(rows):
        return CacheDataset(ChatDataset(per_answer(rows), tokenizer, mask_prompt=True))

    train_set, valid_set = dataset(train), dataset(valid)
    lengths = [len(train_set[i][0]) for i in range(len(train_set))] + [len(valid_set[i][0]) for i in range(len(valid_set))]
    too_long = sum(1 for n in lengths if n > opts.max_length)
    if too_long:
        raise ConfigError(f"{too_long} row(s) are longer than --max-length {opts.max_length} tokens "
                          f"(the longest has {max(lengths)}).", f"Raise --max-length to {max(lengths)} or more.")

    model.freeze()
    lora_parameters = {"rank": opts.lora_rank, "scale": opts.lora_alpha / opts.lora_rank, "dropout": opts.lora_dropout}
    num_layers = len(model.layers)
    linear_to_lora_layers(model, num_layers, lora_parameters)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    iters = max(1, math.ceil(opts.epochs * len(train) / opts.batch_size))
    adapter_dir = Path(opts.output) / "adapter"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArgs(batch_size=opts.batch_size, iters=iters, val_batches=-1, steps_per_report=1,
                        steps_per_eval=max(1, iters // max(1, math.ceil(opts.epochs))),
                        steps_per_save=min(iters, opts.save_every or iters), adapter_file=str(adapter_dir / "adapters.safetensors"),
                        max_seq_length=opts.max_length, grad_checkpoint=bool(opts.gradient_checkpointing))
    history, losses = [], []

    class Callback(TrainingCallback):
        def on_train_loss_report(self, info):
            losses.append(float(info["train_loss"]))
            progress({"event": "step", "step": info["iteration"], "total": iters, "loss": losses[-1]})

        def on_val_loss_report(self, info):
            history.append({"step": info["iteration"], "val_loss": float(info["val_loss"])})
            progress({"event": "eval", "step": info["iteration"], "val_loss": float(info["val_loss"])})

    started = time.perf_counter()
    mlx_train(model, optim.Adam(learning_rate=opts.learning_rate), train_set, valid_set, args=args,
              training_callback=Callback())
    seconds = time.perf_counter() - started
    if not losses or not all(math.isfinite(x) for x in losses):
        raise DatakegError(f"training produced no finite loss ({losses[-3:]})", "Lower --learning-rate.")
    (adapter_dir / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora_parameters,
        "model": opts.base_model}, indent=2))
    progress({"event": "save", "message": f"fusing the adapter into {Path(opts.output) / 'merged'}"})
    fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    save(Path(opts.output) / "merged", opts.base_model, model, tokenizer, config, donate_model=False)
    return {
        "device": str(mx.default_device()), "steps": iters, "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / iters, 4), "trainable_parameters": int(trainable),
        "first_loss": losses[0], "final_loss": losses[-1], "history": history,
        "adapter": str(adapter_dir), "merged": str(Path(opts.output) / "merged"),
    }

