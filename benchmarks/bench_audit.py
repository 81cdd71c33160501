"""Leakage search benchmark: time, peak memory and planted-copy recall of
``datakeg.curation.leakage.find_leaks`` on synthetic question sets. Prints a table; no assertions.

    python benchmarks/bench_audit.py [--sizes 10000 100000] [--threshold 0.9] [--seed 0]

Each size runs in a fresh child process so that its peak RSS (resource.getrusage) is its own.
Questions: 60% train, 20% valid, 20% test, 20 per document; 1-4 opening words ("How do I", ...)
then 5-11 words, 88% of them drawn (Zipf-like) from ~300 common English words and 12% from a
20,000-word synthetic rare vocabulary, so about a third of the questions hold common words only.
2% of the valid/test slots are planted near-copies of an earlier question of another document
(one word replaced, inserted or deleted): valid~train, test~train, test~valid and repeats inside
valid/test. Recall counts the planted pairs whose cosine really is >= threshold (computed for
that pair alone) that no longer both survive (the copy, or its source, was removed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = """how do i can what is the a an to in on of for with from by at my your this that which when where
why does should use set get run make find change add remove export import log file files config configuration
server client user users data error errors message messages option options default value values command commands
line output input mode version update install setup start stop restart enable disable create delete list show
open close save load read write check test build project folder path name names type types key keys account
password access permission permissions network port host service services database table tables query queries
report reports time date format text page pages view window settings setting system process memory disk cache
limit size number string field fields record records event events job jobs task tasks""".split()
STARTS = ["How do I", "How can I", "What is the", "What does the", "Why does the", "Can I", "Where is the",
          "When should I", "Which", "Is it possible to", "What happens if I", "How to"]
_WEIGHTS = list(itertools.accumulate(1 / (r + 5) ** 0.9 for r in range(len(COMMON))))


def rare_vocabulary(rng: random.Random, n: int = 20000) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 10))))
    return sorted(words)


def question(rng: random.Random, rare: list[str]) -> str:
    words = []
    for _ in range(rng.randint(5, 11)):
        if rng.random() < 0.12:
            words.append(rng.choice(rare[:500]) if rng.random() < 0.5 else rng.choice(rare))
        else:
            words.append(rng.choices(COMMON, cum_weights=_WEIGHTS)[0])
    return f"{rng.choice(STARTS)} {' '.join(words)}?"


def variant(rng: random.Random, q: str) -> str:
    """One word replaced (60%), inserted (20%) or deleted (20%, long questions only)."""
    w = q[:-1].split()
    k = rng.randrange(len(w))
    op = rng.random()
    if op < 0.6 or (op >= 0.8 and len(w) <= 6):
        w[k] = rng.choice(COMMON)
    elif op < 0.8:
        w.insert(k, rng.choice(COMMON))
    else:
        del w[k]
    return " ".join(w) + "?"


def dataset(n: int, seed: int = 0, planted: float = 0.02, per_doc: int = 20):
    """(questions, splits, docs, [(copy index, source index)]) in document order."""
    rng = random.Random(seed)
    rare = rare_vocabulary(rng)
    ntrain, nvalid = int(n * 0.6), int(n * 0.2)
    qs = [question(rng, rare) for _ in range(n)]
    splits = ["train"] * ntrain + ["valid"] * nvalid + ["test"] * (n - ntrain - nvalid)
    docs = [i // per_doc for i in range(n)]
    plants = {}
    for _ in range(int(planted * n)):
        j = rng.randrange(ntrain, n)
        src = rng.randrange(0, j - 2 * per_doc)  # an earlier question of another document
        qs[j] = variant(rng, qs[src])
        plants[j] = src  # a later plant on the same slot replaces the earlier one
    return qs, splits, docs, sorted(plants.items())


def pair_cosine(x, a: int, b: int) -> float:
    return float(x[a].astype("float64").multiply(x[b]).sum())


def run_one(n: int, threshold: float, seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from datakeg.curation import leakage
    from datakeg.curation.quality import normalize_question

    qs, splits, docs, plants = dataset(n, seed)
    start = time.perf_counter()
    leaks = leakage.find_leaks(qs, splits, docs, threshold)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # recall on the planted pairs that really are >= threshold (the same vectors as find_leaks)
    x = leakage.tfidf_matrix([normalize_question(q) for q in qs])
    real = [(j, src) for j, src in plants if pair_cosine(x, j, src) >= threshold]
    removed = {leak.index for leak in leaks}
    caught = sum(1 for j, src in real if j in removed or src in removed)
    kinds: dict[str, int] = {}
    for leak in leaks:
        kinds[leak.kind] = kinds.get(leak.kind, 0) + 1
    stats: dict = {}
    leakage.similar_pairs(x, threshold, stats=stats)  # stage counts only (not timed)
    return {"n": n, "seconds": seconds, "peak_mb": peak_mb, "leaks": len(leaks), "kinds": kinds,
            "planted": len(plants), "planted_real": len(real), "caught": caught, "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.threshold, args.seed)))
        return
    print(f"find_leaks, threshold {args.threshold:g} (each size in its own process)")
    print(f"{'n':>8} {'seconds':>8} {'peak MB':>8} {'leaks':>6} {'planted>=t':>10} {'recall':>7}  stages")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--threshold", str(args.threshold),
                              "--seed", str(args.seed)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        recall = r["caught"] / r["planted_real"] if r["planted_real"] else 1.0
        st = r["stats"]
        print(f"{r['n']:>8} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r['leaks']:>6} "
              f"{r['planted_real']:>4}/{r['planted']:<5} {recall:>7.1%}  depth {st['depth']}, "
              f"{st['candidates']:,} candidates, {st['bounded']:,} after the crude bound, "
              f"{st['verified']:,} scored, {st['pairs']:,} pairs >= t; kinds {r['kinds']}")


if __name__ == "__main__":
    main()
