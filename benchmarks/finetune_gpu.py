"""Prove and time the PyTorch fine-tuning path on a GPU (or the CPU): build a randomly initialised
Llama-style model of a chosen size from a config and a given tokenizer (no download), then run
`datakeg finetune`'s torch backend on a datakeg output folder and print the figures.

    python benchmarks/finetune_gpu.py --tokenizer TOKENIZER_DIR --data OUT [--layers 8] [--hidden 1024]
        [--epochs 1] [--batch-size 8]

Prints device, dtype, gradient checkpointing, parameters, steps, seconds per step, peak GPU memory,
first/final loss, the memory estimate datakeg made before training (to compare with the measured
peak), and checks that the merged model loads and generates from the same prompt eval uses (chat
template and BOS as in training).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args(argv)

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from datakeg.training.finetune import FinetuneOptions, finetune

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="datakeg-gpu-"))
    base = work / "base"
    torch.manual_seed(0)
    heads = max(1, args.hidden // 128)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(base)
    tok.save_pretrained(base)
    out = args.output or work / "ft"
    opts = FinetuneOptions(data=args.data, base_model=str(base), output=out, backend="torch", epochs=args.epochs,
                           batch_size=args.batch_size, max_length=args.max_length,
                           save_every=args.save_every)
    result = finetune(opts, lambda e: print(json.dumps(e), flush=True) if e["event"] != "step" or e["step"] % 10 == 0
                      else None)
    merged = AutoModelForCausalLM.from_pretrained(result["merged"], dtype=torch.bfloat16 if torch.cuda.is_available()
                                                  else torch.float32)
    merged.to("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(result["merged"])  # carries the chat template used in training
    from datakeg.support.chat_template import render, text_ids

    prompt = text_ids(tok, render(tok, [{"role": "user", "content": "What does Ollama do?"}], add_generation_prompt=True))
    ids = torch.tensor([prompt], device=merged.device)
    generated = merged.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id).shape[1] - len(prompt)
    keys = ("backend", "device", "dtype", "gradient_checkpointing", "parameters", "trainable_parameters", "train_rows",
            "steps", "seconds", "seconds_per_step", "peak_gpu_memory_gib", "memory", "first_loss", "final_loss",
            "best")
    figures = {k: result[k] for k in keys}
    figures["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    figures["merged_generated_tokens"] = int(generated)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
