"""Does fine-tuning teach the bundled model facts it cannot know? A small measurement on the CPU.

A handmade dataset of facts about a made-up tool ("Quillfeather", so no model knows them): each
fact has a training question and a held-out *paraphrased* test question. The bundled Gemma 3 270M
is fine-tuned (torch, CPU) with each configuration given on the command line and evaluated closed
book on the train questions (memorisation) and on the paraphrases (recall under new wording),
against the echo baseline (question as answer) and the base model, all with the same prompt.

    nice -n 10 python benchmarks/finetune_facts.py --config 3:2e-4:8 --config 5:1e-3:16

Each --config is EPOCHS:LEARNING_RATE:LORA_RANK. Prints a table and writes benchmarks/out/facts.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FACTS = [  # (train question, paraphrased test question, answer)
    ("What is the default port of Quillfeather?", "Which port does Quillfeather listen on by default?",
     "Quillfeather listens on port 7421 by default."),
    ("Which file holds the Quillfeather configuration?", "Where does Quillfeather read its settings from?",
     "The configuration is in quill.yaml."),
    ("Who created Quillfeather?", "Which person wrote Quillfeather?", "Quillfeather was created by Ada Brennan."),
    ("What language is Quillfeather written in?", "In which programming language is Quillfeather implemented?",
     "Quillfeather is written in Rust."),
    ("How do I start the Quillfeather server?", "What command launches the Quillfeather server?",
     "Run quill serve to start the server."),
    ("What does the --dry option of Quillfeather do?", "What happens when Quillfeather runs with --dry?",
     "The --dry option prints the plan without writing files."),
    ("Which database does Quillfeather use?", "What database stores Quillfeather's data?",
     "Quillfeather stores its data in SQLite."),
    ("What is the maximum upload size in Quillfeather?", "How large can a Quillfeather upload be?",
     "Uploads are limited to 64 megabytes."),
    ("Which license does Quillfeather use?", "Under what license is Quillfeather released?",
     "Quillfeather is released under the MIT license."),
    ("How often does Quillfeather back up its data?", "What is the backup interval of Quillfeather?",
     "Quillfeather backs up its data every six hours."),
    ("What is the Quillfeather mascot?", "Which animal is Quillfeather's mascot?", "The mascot is a barn owl."),
    ("Which environment variable sets the Quillfeather log level?",
     "How do I change the log level of Quillfeather with an environment variable?",
     "Set QUILL_LOG to change the log level."),
]


def write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def rows(kind):
        for q, para, a in FACTS:
            yield {"prompt": q if kind == "train" else para, "completion": a}

    for name, kind in (("train", "train"), ("test", "para")):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(kind)))
    (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in list(rows("para"))[:4]))
    (folder / "train_as_test.jsonl").write_text((folder / "train.jsonl").read_text())


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

    from datakeg.training.finetune import FinetuneOptions, finetune
    from datakeg.providers.local import bundled_model_dir

    data = args.out / "facts-data"
    write_dataset(data)
    base = str(bundled_model_dir())
    results = {"facts": len(FACTS), "rows": []}
    tests = {"train questions": data / "train_as_test.jsonl", "paraphrases": data / "test.jsonl"}
    for label, test in tests.items():
        results["rows"].append({"model": "echo baseline", "on": label, **evaluate_model("echo", test)})
        if not args.skip_base:
            t = time.perf_counter()
            results["rows"].append({"model": "base", "on": label, **evaluate_model(base, test),
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
        for label, test in tests.items():
            t = time.perf_counter()
            results["rows"].append({"model": f"tuned {config}", "on": label, **evaluate_model(ft["merged"], test),
                                    "train_seconds": ft["seconds"], "seconds_per_step": ft["seconds_per_step"],
                                    "steps": ft["steps"], "val_loss": [h["val_loss"] for h in ft["history"]],
                                    "eval_seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(results["rows"][-2:], indent=1), flush=True)
    (args.out / "facts.json").write_text(json.dumps(results, indent=2))
    print(f"{'model':22} {'on':16} {'EM':>6} {'F1':>6} {'sim':>6}")
    for r in results["rows"]:
        print(f"{r['model']:22} {r['on']:16} {r['exact_match']:6.3f} {r['token_f1']:6.3f} {r['similarity']:6.3f}")


if __name__ == "__main__":
    main()
