"""Does fine-tuning teach the bundled model facts it cannot know? A small measurement on the CPU.

A handmade dataset of facts about a made-up tool ("Quillfeather", so no model knows them): each
fact has a training question, a held-out *paraphrased* test question and a third wording for
validation (valid.jsonl), which picks the best checkpoint; no test question is used to choose it. The bundled Gemma 3 270M
is fine-tuned (torch, CPU) with each configuration given on the command line and evaluated closed
book on the train questions (memorisation) and on the paraphrases (recall under new wording),
against the echo baseline (question as answer) and the base model, all with the same prompt. Each
configuration's last step is evaluated, and so is the checkpoint with the lowest validation loss when
that is another step.

    nice -n 10 python benchmarks/finetune_facts.py --config 3:2e-4:8 --config 5:1e-3:16

Each --config is EPOCHS:LEARNING_RATE:LORA_RANK. Prints a table and writes benchmarks/out/facts.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FACTS = [  # (train question, paraphrased test question, validation question, answer)
    ("What is the default port of Quillfeather?", "Which port does Quillfeather listen on by default?",
     "If I do not configure a port, where can I reach Quillfeather?",
     "Quillfeather listens on port 7421 by default."),
    ("Which file holds the Quillfeather configuration?", "Where does Quillfeather read its settings from?",
     "Name the file I edit to configure Quillfeather.",
     "The configuration is in quill.yaml."),
    ("Who created Quillfeather?", "Which person wrote Quillfeather?",
     "Tell me the author of Quillfeather.",
     "Quillfeather was created by Ada Brennan."),
    ("What language is Quillfeather written in?", "In which programming language is Quillfeather implemented?",
     "Is Quillfeather's source code Python, Go or something else?",
     "Quillfeather is written in Rust."),
    ("How do I start the Quillfeather server?", "What command launches the Quillfeather server?",
     "I want Quillfeather running as a server: what do I type?",
     "Run quill serve to start the server."),
    ("What does the --dry option of Quillfeather do?", "What happens when Quillfeather runs with --dry?",
     "Explain the effect of passing --dry to Quillfeather.",
     "The --dry option prints the plan without writing files."),
    ("Which database does Quillfeather use?", "What database stores Quillfeather's data?",
     "Where does Quillfeather keep its records: Postgres, MySQL or another engine?",
     "Quillfeather stores its data in SQLite."),
    ("What is the maximum upload size in Quillfeather?", "How large can a Quillfeather upload be?",
     "Is there a limit on the size of files sent to Quillfeather?",
     "Uploads are limited to 64 megabytes."),
    ("Which license does Quillfeather use?", "Under what license is Quillfeather released?",
     "May I reuse Quillfeather's code, and on which terms?",
     "Quillfeather is released under the MIT license."),
    ("How often does Quillfeather back up its data?", "What is the backup interval of Quillfeather?",
     "How many hours pass between two Quillfeather backups?",
     "Quillfeather backs up its data every six hours."),
    ("What is the Quillfeather mascot?", "Which animal is Quillfeather's mascot?",
     "What creature represents the Quillfeather project?",
     "The mascot is a barn owl."),
    ("Which environment variable sets the Quillfeather log level?",
     "How do I change the log level of Quillfeather with an environment variable?",
     "To get more verbose Quillfeather logs, which variable do I export?",
     "Set QUILL_LOG to change the log level."),
]


def write_dataset(folder: Path) -> None:
    """train: the training questions; test: the paraphrases; valid: a third wording of every fact,
    used only to pick the best checkpoint, so no test question takes part in choosing it."""
    folder.mkdir(parents=True, exist_ok=True)
    questions = {"train": [f[0] for f in FACTS], "test": [f[1] for f in FACTS], "valid": [f[2] for f in FACTS]}
    norm = [{q.lower().strip(" ?.") for q in qs} for qs in questions.values()]
    assert all(len(s) == len(FACTS) for s in norm) and not (norm[0] & norm[1] or norm[0] & norm[2] or norm[1] & norm[2])
    for name, qs in questions.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": q, "completion": f[3]}) + "\n"
                                                      for q, f in zip(qs, FACTS)))
    (folder / "train_as_test.jsonl").write_text((folder / "train.jsonl").read_text())


def merge_adapter(base: str, adapter: Path, tokenizer_from: Path, dest: Path) -> Path:
    """The base model with ADAPTER merged in, saved to DEST with the tokenizer the run trained with."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(dest)
    return dest


def evaluate_model(model: str | None, test: Path) -> dict:
    from datakeg.evaluation.evaluate import echo_baseline, evaluate, load_test_pairs
    from datakeg.providers.local import LocalProvider

    pairs = load_test_pairs(test)
    if model == "echo":
        return echo_baseline(pairs).summary()
    prov = LocalProvider(model)
    prov.prepare()
    return evaluate(pairs, prov, max_tokens=40).summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="EPOCHS:LR:RANK (repeatable)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--skip-base", action="store_true", help="do not evaluate the base model")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()

    from datakeg.providers.local import bundled_model_dir
    from datakeg.training.finetune import FinetuneOptions, finetune

    data = args.out / "facts-data"
    write_dataset(data)
    base = str(bundled_model_dir())
    results = {"facts": len(FACTS), "validation": "a third wording of each fact, distinct from the train and "
                                                  "test questions", "rows": []}
    tests = {"train questions": data / "train_as_test.jsonl", "paraphrases": data / "test.jsonl"}
    for label, test in tests.items():
        results["rows"].append({**evaluate_model("echo", test), "model": "echo baseline", "on": label})
        if not args.skip_base:
            t = time.perf_counter()
            results["rows"].append({**evaluate_model(base, test), "model": "base", "on": label,
                                    "eval_seconds": round(time.perf_counter() - t, 1)})
    for config in args.config or ["3:2e-4:8"]:
        epochs, lr, rank = config.split(":")
        out = args.out / f"ft-{config.replace(':', '_')}"
        opts = FinetuneOptions(data=data, base_model=base, output=out, backend="torch", epochs=float(epochs),
                               batch_size=args.batch_size, learning_rate=float(lr), lora_rank=int(rank),
                               lora_alpha=2.0 * int(rank), max_length=256, save_every=0)
        ft = finetune(opts, lambda e: print("  ", e.get("message") or
                                              {k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()},
                                              flush=True))
        best = ft["best"]
        candidates = [(f"tuned {config} last", ft["merged"])]
        if best["step"] and best["step"] != ft["steps"]:  # the checkpoint validation picked, when not the last
            candidates.append((f"tuned {config} best@{best['step']}",
                               str(merge_adapter(base, Path(best["adapter"]), Path(ft["merged"]), out / "best-merged"))))
        for name, model in candidates:
            for label, test in tests.items():
                t = time.perf_counter()
                results["rows"].append({**evaluate_model(model, test), "model": name, "on": label,
                                        "train_seconds": ft["seconds"], "seconds_per_step": ft["seconds_per_step"],
                                        "steps": ft["steps"], "val_loss": [h["val_loss"] for h in ft["history"]],
                                        "best_step": best["step"], "eval_seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(results["rows"][-2:], indent=1), flush=True)
    (args.out / "facts.json").write_text(json.dumps(results, indent=2))
    print(f"{'model':30} {'on':16} {'EM':>6} {'F1':>6} {'sim':>6}")
    for r in results["rows"]:
        print(f"{r['model'][-30:]:30} {r['on']:16} {r['exact_match']:6.3f} {r['token_f1']:6.3f} {r['similarity']:6.3f}")


if __name__ == "__main__":
    main()
