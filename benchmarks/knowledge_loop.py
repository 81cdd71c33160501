"""Does the tuned model know the docs? The whole loop, measured: docs -> generate -> finetune -> eval
closed book vs RAG vs open book, for the base and the tuned model, with and without --paraphrases and
--held-out taught. Prints one table and writes benchmarks/out/knowledge_loop.json.

    nice -n 10 python benchmarks/knowledge_loop.py                      # testdoc/, fake server, CPU
    python benchmarks/knowledge_loop.py --provider openai --base-url http://localhost:8000/v1 -m qwen2.5-7b
    python benchmarks/knowledge_loop.py --only plain --epochs 2 --limit 8   # a quick, reduced run

generate: the fake LLM server by default (datakeg.testing.fake_server: deterministic, every answer a
window of the chunk's words, every question "What is said about <span>?"), or any provider.
finetune: the bundled Gemma 3 270M, torch, on the GPU when there is one, else the CPU (the defaults
are sized to finish on 2 CPU cores). eval: every test question closed book, with the top --rag-k BM25
chunks of the docs (RAG) and with its own source chunk (open book), same prompt for every model;
token F1 (no judge here); the base model is evaluated once per distinct test set.

Configurations (``--only`` picks some): plain; paraphrases (``--paraphrases 2``); taught
(``--held-out taught``); paraphrases+taught.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"plain": {}, "paraphrases": {"paraphrases": 2}, "taught": {"held_out": "taught"},
           "paraphrases+taught": {"paraphrases": 2, "held_out": "taught"}}  # --paraphrases K sets the 2


def generate(docs: Path, out: Path, args, extra: dict) -> dict:
    import datakeg

    kw = dict(provider=args.provider, model=args.model, base_url=args.base_url, fresh=True,
              pairs_per_1k=args.pairs_per_1k, chunk_size=args.chunk_size, **extra)
    if args.provider == "openai" and args.base_url is None:
        from datakeg.testing.fake_server import FakeLLMServer

        with FakeLLMServer() as srv:
            kw["base_url"] = srv.url
            kw["model"] = "fake-model"
            result = datakeg.generate(docs, out, **kw)
    else:
        result = datakeg.generate(docs, out, **kw)
    return result.manifest


def evaluate_all(model_dir: str, test: Path, args, index, report: Path) -> dict:
    """Closed / RAG / open-book token F1 of one model on one test file (and the RAG hit rate); every
    answer in REPORT.json / REPORT.md."""
    from datakeg.evaluation.evaluate import (
        echo_baseline,
        evaluate,
        hit_rate,
        load_questions,
        write_reports,
    )
    from datakeg.providers.local import LocalProvider

    qs = load_questions([test], args.limit)
    keys = [s.key if s else None for s in qs.sources]
    prov = LocalProvider(model_dir)
    prov.prepare()
    modes = {"closed": None, "rag": [index.search(p.question, args.rag_k) for p in qs.pairs],
             "open": [[s] if s else None for s in qs.sources]}
    row, reports = {"questions": len(qs.pairs), "echo": echo_baseline(qs.pairs).summary()["token_f1"]}, []
    for mode, contexts in modes.items():
        t = time.perf_counter()
        rep = evaluate(qs.pairs, prov, mode=mode, contexts=contexts, splits=qs.splits, sources=keys,
                       max_tokens=args.max_tokens)
        reports.append(rep)
        row[mode] = rep.summary()["token_f1"]
        row[f"{mode}_seconds"] = round(time.perf_counter() - t, 1)
    write_reports(reports, report)
    row["hit_rate"] = hit_rate(reports)[0]
    row["closed_of_rag"] = round(row["closed"] / row["rag"], 3) if row["rag"] else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, default=ROOT / "testdoc")
    ap.add_argument("--provider", default="openai", help="generation provider (default: the fake server)")
    ap.add_argument("--base-url", default=None, help="generation server (default: a fake server started here)")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--pairs-per-1k", type=float, default=2.0)
    ap.add_argument("--chunk-size", type=int, default=2000)
    ap.add_argument("--only", action="append", choices=list(CONFIGS), help="configurations to run (repeatable)")
    ap.add_argument("--paraphrases", type=int, default=2, help="K of the paraphrase configurations")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--rag-k", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test questions")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "knowledge_loop")
    args = ap.parse_args()

    from datakeg.evaluation.rag import Index
    from datakeg.providers.local import bundled_model_dir
    from datakeg.training.finetune import FinetuneOptions, finetune

    started = time.perf_counter()
    base = str(bundled_model_dir())
    index = Index.build(args.docs, args.chunk_size)
    results = {"docs": str(args.docs), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items()}, "rows": []}
    base_rows: dict[str, dict] = {}
    for name in args.only or list(CONFIGS):
        out = args.out / name
        t = time.perf_counter()
        extra = {k: (args.paraphrases if k == "paraphrases" else v) for k, v in CONFIGS[name].items()}
        manifest = generate(args.docs, out, args, extra)
        gen_s = round(time.perf_counter() - t, 1)
        test = out / "test.jsonl"
        taught = (manifest.get("taught") or {}).get("test", {}).get("share")
        delivered = manifest["totals"]["delivered"]
        train_rows = len((out / "train.jsonl").read_text().splitlines())
        print(f"[{name}] generated in {gen_s} s: {delivered} (train rows {train_rows}), taught test share "
              f"{taught}", flush=True)
        digest = test.read_text()  # the base model is evaluated once per distinct test set
        if digest not in base_rows:
            t = time.perf_counter()
            base_rows[digest] = evaluate_all(base, test, args, index, out / "eval_base")
            print(f"[{name}] base model: {base_rows[digest]} ({time.perf_counter() - t:.0f} s)", flush=True)
        opts = FinetuneOptions(data=out, base_model=base, output=out / "finetuned", backend="torch",
                               epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, max_length=512,
                               save_every=0)
        ft = finetune(opts, lambda e: print("  ", e.get("message") or {k: (round(v, 4) if isinstance(v, float)
                                                                            else v) for k, v in e.items()},
                                            flush=True) if e.get("event") != "step" else None)
        tuned = evaluate_all(ft["merged"], test, args, index, out / "eval_tuned")
        print(f"[{name}] tuned: {tuned} (train {ft['seconds']} s, {ft['steps']} steps)", flush=True)
        common = {"config": name, "train_rows": train_rows, "valid": delivered["valid"], "test": delivered["test"],
                  "taught_test_share": taught, "generate_seconds": gen_s}
        results["rows"].append({**common, "model": "base", **base_rows[digest]})
        results["rows"].append({**common, "model": "tuned", **tuned, "steps": ft["steps"],
                                "train_seconds": ft["seconds"], "seconds_per_step": ft["seconds_per_step"]})
        results["seconds"] = round(time.perf_counter() - started, 1)
        (args.out.parent / "knowledge_loop.json").write_text(json.dumps(results, indent=2))  # after each one

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{'config':20} {'model':6} {'train':>5} {'test':>4} {'taught':>6} {'echo':>6} {'closed':>7} {'RAG':>7} "
          f"{'open':>7} {'hit@k':>6} {'closed/RAG':>10}")
    for r in results["rows"]:
        print(f"{r['config']:20} {r['model']:6} {r['train_rows']:5d} {r['questions']:4d} {f(r['taught_test_share']):>6} "
              f"{f(r.get('echo')):>6} {f(r['closed']):>7} {f(r['rag']):>7} {f(r['open']):>7} {f(r['hit_rate']):>6} "
              f"{'-' if r['closed_of_rag'] is None else format(r['closed_of_rag'], '.0%'):>10}")
    print(f"token F1; RAG: top {args.rag_k} BM25 chunks (chunk size {args.chunk_size}); total {results['seconds']} s")


if __name__ == "__main__":
    main()
