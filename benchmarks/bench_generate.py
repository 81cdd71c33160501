"""datakeg generate benchmark: speed vs the latency-bound limit, prompt economy vs the naive
scheme, and audit/dedupe time. Prints tables; no assertions (see README, "Benchmarks").

    python benchmarks/bench_generate.py [--corpus ../shared/corpus] [--latency 0.2]
        [--concurrency 1 4 8 16] [--pairs 10000 100000]

The model is the bundled fake LLM server (real HTTP on 127.0.0.1, fixed latency per request);
token counts are the server's estimate (characters / 4) for both schemes alike.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datakeg
from datakeg.prompts import SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]


def run_generate(corpus: Path, latency: float, concurrency: int, work: Path):
    """One full run through the public API (lock, fingerprint, audit, manifest, merge)."""
    plan = datakeg.plan(corpus).plan
    out = work / f"c{concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    with fake_server_process(latency) as url:
        start = time.perf_counter()
        result = datakeg.generate(corpus, out, provider="openai", base_url=url, model="fake-model",
                                  concurrency=concurrency)
        wall = time.perf_counter() - start
    return plan, result.manifest, wall, out


@contextlib.contextmanager
def fake_server_process(latency: float):
    """The fake server in its own process, as a real model server would be (no shared GIL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "datakeg.testing.fake_server", "--port", str(port),
                             "--latency", str(latency)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdout.readline()  # the server prints its address once it listens
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait()


def naive_figures(plan, out: Path) -> tuple[float, int, int]:
    """The original tool's scheme on the same documents: per document three calls (train, valid,
    test), each with the whole document and every earlier pair. Returns (prompt tokens per pair,
    largest prompt, most pairs asked in one request)."""
    import json

    total_tokens = total_pairs = largest = most = 0
    for dp in plan.docs:
        earlier: list[str] = []
        for split in ("train", "valid", "test"):
            n = dp.by_split[split]
            if n == 0:
                continue
            exclusions = "\n".join(earlier)
            prompt = (f"{SYSTEM_PROMPT}\nDocument:\n{dp.doc.text}\nGenerate {n} question-answer pairs for {split}. "
                      f"Do not generate questions similar to these:\n{exclusions}")
            tokens = len(prompt) // 4
            total_tokens += tokens
            largest = max(largest, tokens)
            most = max(most, n)
            path = out / f"{dp.output}_{split}.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                earlier.append(f"Q: {row['prompt']}\nA: {row['completion']}")
        total_pairs += dp.total
    return total_tokens / max(1, total_pairs), largest, most


def synthetic_questions(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ren", "tos", "vel", "qua", "dri", "sen", "por", "lin", "gat", "fyr", "zum", "bex"]
    vocab = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(6000)})
    forms = ["How does {} {} handle {} when {} is {}?", "What is the default {} of {} in {} {}?",
             "Which {} option enables {} for {} and {}?", "Why does {} return {} after {} {} fails?",
             "Where is the {} {} stored when {} uses {}?"]
    out = []
    for _ in range(n):
        form = rng.choice(forms)
        out.append(form.format(*(rng.choice(vocab) for _ in range(form.count("{}")))))
    return out


def bench_quality(n: int) -> tuple[float, float]:
    """Seconds for the leakage audit (n pairs: 60% train vs 40% valid/test) and for per-document
    rapidfuzz dedupe of the same n questions in documents of 500 pairs."""
    from datakeg.auditing import leaking
    from datakeg.quality import Gate, normalize_question

    qs = synthetic_questions(n)
    cut = int(n * 0.6)
    start = time.perf_counter()
    leaking(qs[:cut], qs[cut:], 0.9)
    audit_s = time.perf_counter() - start
    start = time.perf_counter()
    for doc in range(0, n, 500):
        gate = Gate()
        for q in qs[doc:doc + 500]:
            norm = normalize_question(q)
            if not gate.is_duplicate(norm):
                gate.accept(norm)
    dedupe_s = time.perf_counter() - start
    return audit_s, dedupe_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = ROOT.parent / "shared" / "corpus"
    ap.add_argument("--corpus", type=Path, default=shared if shared.is_dir() else ROOT / "testdoc",
                    help="documents to generate from (default: ../shared/corpus, else testdoc/)")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--pairs", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="datakeg-bench-"))
    try:
        print(f"Corpus {args.corpus}: fake server latency {args.latency * 1000:.0f} ms per request\n")
        print(f"{'concurrency':>11} {'requests':>8} {'wall s':>7} {'limit s':>7} {'wall/limit':>10} {'pairs':>6}")
        last = None
        for c in args.concurrency:
            plan, manifest, wall, out = run_generate(args.corpus, args.latency, c, work)
            t = manifest["totals"]
            limit = t["requests"] * args.latency / c
            pairs = sum(t["delivered"].values())
            print(f"{c:>11} {t['requests']:>8} {wall:>7.2f} {limit:>7.2f} {wall / limit:>9.2f}x {pairs:>6}")
            last = (plan, manifest, out)
        plan, manifest, out = last
        t = manifest["totals"]
        pairs = sum(t["delivered"].values())
        naive = naive_figures(plan, out)
        print(f"\n{'scheme':<8} {'prompt tokens/pair':>18} {'largest prompt':>15} {'most pairs/request':>19}")
        print(f"{'datakeg':<8} {t['prompt_tokens'] / pairs:>18.0f} {t['max_prompt_tokens']:>15,} {t['max_pairs_asked']:>19}")
        print(f"{'naive':<8} {naive[0]:>18.0f} {naive[1]:>15,} {naive[2]:>19}")
        print(f"\n{'pairs':>8} {'audit s':>8} {'dedupe s':>9}")
        for n in args.pairs:
            audit_s, dedupe_s = bench_quality(n)
            print(f"{n:>8,} {audit_s:>8.2f} {dedupe_s:>9.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
