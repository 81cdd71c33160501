"""datakeg generate benchmark: speed against the latency-bound limit on three corpus shapes, one
and two model servers, prompt economy, prefix-cache share, client CPU and memory. Prints tables;
no assertions (see README, "Benchmarks").

    python benchmarks/bench_generate.py                 # everything, about 9 minutes on 2 cores
    python benchmarks/bench_generate.py --shapes skewed --concurrency 8 32
    python benchmarks/bench_generate.py --memory-pairs 100000   # peak client memory at 100k pairs
    python benchmarks/bench_generate.py --shapes corpus --concurrency 8 --spares 0   # quick: one shape, one row

The model is the bundled fake LLM server in its own process (real HTTP on 127.0.0.1, a fixed
latency per request counted from the request's arrival, a simulated prefix cache); token counts are
its estimate (characters / 4). One server process serves every run, reset before each (it forgets
every request); its replies to a shape's excerpts are computed once, in the shape's warm-up run.

Shapes:
  corpus  ../shared/corpus when it exists, else testdoc/ (the project's own pages)
  skewed  one 45k-character reference page plus five small pages (Chinese, Japanese, a 400-character
          page, a README, a .rst.txt), at --pairs-per-1k 3
  many    500 small generated documents (600-1,500 characters each)

The limit is the larger of requests x latency / concurrency and the planned chain of requests that
must follow one another x latency: what a client that never waits on itself would take. The run
limit is what no client could beat with the run's replies: the larger of the whole waves of
requests (each slot answers one request per latency, so N requests on C slots need ceil(N / C)
latencies) and the chain the run actually had (manifest ``request_chain``), times the latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datakeg
from datakeg.generation.prompts import SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpus"


def _words(rng: random.Random, n: int) -> list[str]:
    syll = ["ka", "lo", "mi", "ren", "tos", "vel", "qua", "dri", "sen", "por", "lin", "gat", "fyr", "zum", "bex"]
    return ["".join(rng.choice(syll) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def _prose(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        sentence = " ".join(_words(rng, rng.randint(8, 16))).capitalize() + "."
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)


def make_skewed(dest: Path) -> Path:
    rng = random.Random(11)
    dest.mkdir(parents=True, exist_ok=True)
    parts = ["# Frobnicator reference\n"]
    for h in range(24):
        parts.append(f"## Section {h}: {' '.join(_words(rng, 3))}\n\n{_prose(rng, 1700)}\n")
    (dest / "reference.md").write_text("\n".join(parts))
    for rel in ("zh/quickstart.md", "ja/quickstart.md", "README.md", "guide/ci.rst.txt"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "testdoc" / rel, dest / rel)
    (dest / "tiny.md").write_text("# Tiny\n\n" + _prose(rng, 380) + "\n")
    return dest


def make_many(dest: Path, n: int = 500) -> Path:
    rng = random.Random(13)
    for k in range(n):
        path = dest / f"d{k // 50:02d}" / f"page{k:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Page {k}\n\n{_prose(rng, rng.randint(600, 1500))}\n")
    return dest


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


_SERVERS: list[str] = []  # base URLs of the fake servers started so far (see fake_servers)
_STACK = contextlib.ExitStack()


def fake_servers(count: int, latency: float) -> list[str]:
    """``count`` fake servers, each reset (``POST /fake/reset``: it forgets every request, as a fresh
    one) and set to ``latency``. The processes live for the whole benchmark, so the cache of the
    replies they computed for a shape's excerpts is warm after the shape's warm-up run: a freshly
    started server would spend its first round computing them, on the 2 cores the client runs on."""
    import urllib.request

    while len(_SERVERS) < count:
        _SERVERS.append(_STACK.enter_context(fake_server_process(0.0)))
    for url in _SERVERS[:count]:
        req = urllib.request.Request(url.replace("/v1", "/fake/reset"), data=json.dumps({"latency": latency}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            r.read()
    return _SERVERS[:count]


def warm_up(corpus: Path, concurrency: int, work: Path, servers: int = 1, **settings) -> None:
    """One run at no latency against each of the first ``servers`` servers alone: the client's imports,
    and every server's replies to these excerpts, are not part of the timed runs."""
    urls = fake_servers(servers, 0.0)
    for k, url in enumerate(urls):
        out = work / f"warm-{k}"
        shutil.rmtree(out, ignore_errors=True)
        datakeg.generate(corpus, out, provider="openai", base_url=url, model="fake-model", concurrency=concurrency,
                         **settings)


def run_generate(corpus: Path, latency: float, concurrency: int, work: Path, servers: int = 1, **settings):
    """One full run through the public API (lock, fingerprint, audit, manifest, merge)."""
    out = work / f"run-{concurrency}-{servers}"
    shutil.rmtree(out, ignore_errors=True)
    urls = fake_servers(servers, latency)
    cpu = time.process_time()
    start = time.perf_counter()
    result = datakeg.generate(corpus, out, provider="openai", base_url=urls, model="fake-model",
                              concurrency=concurrency, **settings)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return result.manifest, wall, cpu, out


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
    from datakeg.curation.audit import leaking
    from datakeg.curation.quality import Gate, normalize_question

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


def chain_length(corpus: Path, settings: dict) -> tuple[int, int]:
    """(requests that must run one after another in the longest document: per split round, the
    chunk that needs the most batches (valid waits for the document's train, test for valid);
    requests the plan needs in all)."""
    from datakeg.generation.planning import batches
    from datakeg.settings import Settings

    s = Settings.build(**settings)
    plan = datakeg.plan(corpus, **settings).plan
    chain = max(sum(max(len(batches(t[sp], s.batch_size)) for t in dp.targets) for sp in ("train", "valid", "test"))
                for dp in plan.docs)
    planned = sum(len(batches(t[sp], s.batch_size)) for dp in plan.docs for t in dp.targets
                  for sp in ("train", "valid", "test"))
    return chain, planned


def speed_table(shapes: dict, concurrencies: list[int], latency: float, work: Path, spares: list[float]) -> None:
    print(f"fake server latency {latency * 1000:.0f} ms per request (the many-documents shape at concurrency 1: a "
          "quarter of it, so that its 1,500 requests take 80 s, not 5 minutes)")
    print("limit = max(requests x latency / concurrency, planned chain x latency): the planned chain is the most "
          "requests the plan makes follow one another")
    print("chain: the most requests that did follow one another in the run (manifest request_chain: the plan's, plus "
          "asking again after a short reply, the duplicate check's and the leakage audit's backfill)")
    print("run limit = max(ceil(requests / concurrency), chain) x latency: what no client could beat with these "
          "replies (each slot answers one request per latency: whole waves)\n")
    print("spares: --spares (rows with spares other than 0 are run at concurrency > 1 only)")
    print("extra: requests beyond the plan (backfill after the duplicate check and the leakage audit)\n")
    print(f"{'shape':<8} {'conc.':>5} {'lat. ms':>7} {'spares':>6} {'requests':>8} {'extra':>5} {'wall s':>7} "
          f"{'limit s':>7} {'wall/limit':>10} {'chain':>5} {'wall/run limit':>14} {'pairs':>6} {'prompt tok/pair':>15} "
          f"{'compl. tok/pair':>15} {'largest prompt':>14} "
          f"{'prefix share':>12} {'cached/prompt':>13} {'client CPU s/1k pairs':>21}")
    for name, (corpus, settings, c1_factor) in shapes.items():
        # warm-up: imports, and the fake server's replies for these excerpts, are not the run
        warm_up(corpus, 8, work, **settings)
        planned_chain, planned = chain_length(corpus, settings)
        for c in concurrencies:
            lat = latency * (c1_factor if c == 1 else 1.0)
            for sp in spares:
                if sp and c == 1:
                    continue
                m, wall, cpu, _ = run_generate(corpus, lat, c, work, spares=sp, **settings)
                t = m["totals"]
                limit = max(t["requests"] * lat / c, planned_chain * lat)
                run_limit = max(math.ceil(t["requests"] / c), t["request_chain"]) * lat
                pairs = sum(t["delivered"].values())
                print(f"{name:<8} {c:>5} {lat * 1000:>7.0f} {sp:>6g} {t['requests']:>8} {t['requests'] - planned:>5} "
                      f"{wall:>7.2f} {limit:>7.2f} {wall / limit:>9.2f}x {t['request_chain']:>5} "
                      f"{wall / run_limit:>13.2f}x {pairs:>6} {t['prompt_tokens'] / pairs:>15.0f} "
                      f"{t['completion_tokens'] / pairs:>15.0f} {t['max_prompt_tokens']:>14,} "
                      f"{t['prompt_prefix_share']:>12.2f} {(t['cached_prompt_tokens'] or 0) / t['prompt_tokens']:>13.2f} "
                      f"{cpu / pairs * 1000:>21.2f}", flush=True)


def client_table(corpus: Path, work: Path) -> None:
    """How many requests a second the client itself gets through: the 500-document shape at 50 ms per
    request, where 32 slots ask for 640 a second, on the cores the fake server uses too."""
    warm_up(corpus, 32, work)
    print(f"\n{'client (500 documents, 50 ms)':<30} {'conc.':>5} {'requests':>8} {'wall s':>7} {'limit s':>7} "
          f"{'wall/limit':>10} {'requests/s':>10} {'client CPU ms/request':>21}")
    for c in (8, 32):
        m, wall, cpu, _ = run_generate(corpus, 0.05, c, work)
        n = m["totals"]["requests"]
        limit = n * 0.05 / c
        print(f"{'':<30} {c:>5} {n:>8} {wall:>7.2f} {limit:>7.2f} {wall / limit:>9.2f}x {n / wall:>10.0f} "
              f"{cpu / n * 1000:>21.2f}", flush=True)


def cold_table(corpus: Path, latency: float, concurrency: int, work: Path) -> None:
    """What a user's ``datakeg generate`` takes: a fresh process each time (Python's start, the
    imports, the audit's libraries), against the same run in this warm process."""
    warm_up(corpus, concurrency, work)
    _, warm_wall, _, _ = run_generate(corpus, latency, concurrency, work)
    print(f"\n{'cold process':<12} {'conc.':>5} {'lat. ms':>7} {'wall s':>7} {'same run in a warm process s':>29}")
    for _ in range(2):
        url = fake_servers(1, latency)[0]
        out = work / "cold"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "datakeg", "generate", str(corpus), str(out), "-p", "openai",
                        "--base-url", url, "-m", "fake-model", "-c", str(concurrency), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"{'':<12} {concurrency:>5} {latency * 1000:>7.0f} {time.perf_counter() - start:>7.2f} "
              f"{warm_wall:>29.2f}", flush=True)


def endpoints_table(corpus: Path, settings: dict, latency: float, concurrency: int, work: Path) -> None:
    warm_up(corpus, concurrency, work, servers=2, **settings)
    chain, _ = chain_length(corpus, settings)
    print(f"\n{'servers':>7} {'conc. each':>10} {'requests':>8} {'wall s':>7} {'limit s':>7} {'wall/limit':>10} "
          f"{'pairs/s':>8} {'speed-up':>8}")
    base = None
    for servers in (1, 2):
        m, wall, _, _ = run_generate(corpus, latency, concurrency, work, servers=servers, **settings)
        t = m["totals"]
        limit = max(t["requests"] * latency / (concurrency * servers), chain * latency)
        rate = sum(t["delivered"].values()) / wall
        base = base or rate
        print(f"{servers:>7} {concurrency:>10} {t['requests']:>8} {wall:>7.2f} {limit:>7.2f} {wall / limit:>9.2f}x "
              f"{rate:>8.1f} {rate / base:>7.2f}x", flush=True)


def memory_run(pairs: int, work: Path) -> None:
    """Peak client memory for a run of about ``pairs`` pairs (no latency), in a child process."""
    corpus = make_many(work / "mem-corpus", n=max(1, pairs // 21))  # about 21 pairs per page at 20 per 1k
    code = (
        "import json, resource, sys, time, datakeg\n"
        "t = time.process_time()\n"
        f"r = datakeg.generate({str(corpus)!r}, {str(work / 'mem-out')!r}, provider='openai', "
        "base_url=sys.argv[1], model='fake-model', concurrency=32, pairs_per_1k=20)\n"
        "print(json.dumps({'pairs': sum(r.delivered.values()), 'requests': r.manifest['totals']['requests'], "
        "'cpu': time.process_time() - t, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    with fake_server_process(0.0) as url:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        return
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{'pairs':>8} {'requests':>8} {'wall s':>7} {'client CPU s':>12} {'CPU s/1k pairs':>14} {'peak MB':>8}")
    print(f"{r['pairs']:>8,} {r['requests']:>8,} {wall:>7.1f} {r['cpu']:>12.1f} {r['cpu'] / r['pairs'] * 1000:>14.2f} "
          f"{r['peak_mb']:>8.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=SHARED if SHARED.is_dir() else ROOT / "testdoc")
    ap.add_argument("--shapes", nargs="+", default=["corpus", "skewed", "many"])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--spares", type=float, nargs="+", default=[0.0, 0.1], help="--spares values to compare")
    ap.add_argument("--endpoints", action="store_true", default=None, help="only the one-vs-two servers run")
    ap.add_argument("--pairs", type=int, nargs="*", default=[], help="also time the audit/dedupe on N synthetic pairs")
    ap.add_argument("--memory-pairs", type=int, default=0, help="also measure peak client memory at about N pairs")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="datakeg-bench-"))
    try:
        shapes = {}
        if "corpus" in args.shapes:
            shapes["corpus"] = (args.corpus, {}, 1.0)
        if "skewed" in args.shapes:
            shapes["skewed"] = (make_skewed(work / "skewed"), {"pairs_per_1k": 3}, 1.0)
        if "many" in args.shapes:
            shapes["many"] = (make_many(work / "many"), {}, 0.25)  # a quarter of the latency at concurrency 1
        print(f"corpus shape: {args.corpus}")
        if not args.endpoints:
            speed_table(shapes, args.concurrency, args.latency, work, args.spares)
        if not args.endpoints and "many" in shapes:
            client_table(shapes["many"][0], work)
        first = next(iter(shapes.values()))
        endpoints_table(first[0], first[1], args.latency, 8, work)
        if not args.endpoints and "corpus" in shapes:
            cold_table(args.corpus, args.latency, 8, work)
            m, _, _, out = run_generate(args.corpus, 0.0, 8, work)
            t = m["totals"]
            plan = datakeg.plan(args.corpus).plan
            naive = naive_figures(plan, out)
            pairs = sum(t["delivered"].values())
            print(f"\n{'scheme':<8} {'prompt tokens/pair':>18} {'largest prompt':>15} {'most pairs/request':>19}")
            print(f"{'datakeg':<8} {t['prompt_tokens'] / pairs:>18.0f} {t['max_prompt_tokens']:>15,} "
                  f"{t['max_pairs_asked']:>19}")
            print(f"{'naive':<8} {naive[0]:>18.0f} {naive[1]:>15,} {naive[2]:>19}")
        if args.pairs:
            print(f"\n{'pairs':>8} {'audit s':>8} {'dedupe s':>9}")
            for n in args.pairs:
                audit_s, dedupe_s = bench_quality(n)
                print(f"{n:>8,} {audit_s:>8.2f} {dedupe_s:>9.2f}")
        if args.memory_pairs:
            memory_run(args.memory_pairs, work)
    finally:
        _STACK.close()
        _SERVERS.clear()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
