"""How fast `datakeg review` answers on a large output folder: 5,000 delivered pairs (50 documents)
plus 500 dropped ones and 1,000 earlier decisions in the journal.

Times, over HTTP through the real Starlette app (in-process ASGI client, JSON encoding included) and
in the model alone: loading OUT, the list unfiltered, each filter (split, file, status, drop reason,
text search, all together), one pair's detail, a keep, an edit (quality gates + leakage audit
against every other pair), and `merge` applying the decisions. Target: listing and filtering
under 200 ms. Prints the median and worst of 20 runs per request.

    PYTHONPATH=. python benchmarks/bench_review.py [--pairs 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datakeg.dataset import review_journal as rj  # noqa: E402
from datakeg.dataset.jsonl import write_rows  # noqa: E402
from datakeg.dataset.provenance import write_sidecar  # noqa: E402
from datakeg.dataset.writers import atomic_write_json, merge  # noqa: E402

WORDS = ("tallyho count check option folder heading words lines markdown config exclude format json csv table "
         "limit depth encoding code block python install release setting value default file report total").split()


def build(out: Path, pairs: int, docs: int = 50) -> None:
    rng = random.Random(7)
    per_doc = pairs // docs
    files = []
    rejects = []
    for d in range(docs):
        stem, file = f"doc{d:03d}", f"docs/page{d:03d}.md"
        chunks = [(f"Page {d} > Part {c}", " ".join(rng.choice(WORDS) for _ in range(600))) for c in range(4)]
        rows_by_split = {"train": [], "valid": [], "test": []}
        for k in range(per_doc):
            split = "train" if k < per_doc * 0.6 else "valid" if k < per_doc * 0.8 else "test"
            chunk = k % 4
            words = chunks[chunk][1].split()
            q = f"How does {' '.join(rng.sample(words, 5))} work in page {d} item {k}?"
            a = " ".join(rng.sample(words, 12))
            rows_by_split[split].append((q, a, chunk))
        for split, recs in rows_by_split.items():
            write_rows(out / f"{stem}_{split}.jsonl", ({"prompt": q, "completion": a} for q, a, _ in recs))
        write_sidecar(out, stem, file, chunks, {s: [(q, c) for q, _, c in recs] for s, recs in rows_by_split.items()})
        for k in range(pairs // 10 // docs):
            rejects.append({"kind": "dropped_pair", "source": file, "split": rng.choice(["train", "valid", "test"]),
                            "chunk": k % 4, "reason": rng.choice(["dangling", "echo", "duplicate", "ungrounded"]),
                            "question": f"What does this section say about item {k} of page {d}?",
                            "answer": " ".join(rng.sample(WORDS, 8))})
        files.append({"path": file, "output": stem})
    write_rows(out / "rejects.jsonl", rejects)
    atomic_write_json(out / "manifest.json", {"files": files, "settings": {}})
    (out / ".datakeg").mkdir(exist_ok=True)
    (out / ".datakeg" / "run.json").write_text(json.dumps({"settings": {"format": "completion"}}))
    merge(out)


def timed(fn, n: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5000)
    args = ap.parse_args()
    from starlette.testclient import TestClient

    from datakeg.review.model import ReviewModel
    from datakeg.review.server import create_app

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        t = time.perf_counter()
        build(out, args.pairs)
        print(f"built OUT: {args.pairs} pairs in 50 documents, {args.pairs // 10} dropped "
              f"({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        model = ReviewModel(out)
        load_ms = (time.perf_counter() - t) * 1000
        ids = [e.item.pair for e in model.entries]
        rng = random.Random(1)
        recs = []
        for k, pid in enumerate(rng.sample(ids, 1000)):  # earlier decisions in the journal
            e = model.by_id[pid]
            recs.append({"pair": pid, "split": e.item.split, "file": e.item.file, "qhash": rj.qhash(e.item.question),
                         "origin": e.item.origin, "version": 1, "action": "reject" if k % 3 else "keep",
                         "status": "rejected" if k % 3 else "kept", "question": None, "answer": None, "note": "",
                         "original_question": e.item.question, "original_answer": e.item.answer,
                         "chunk": e.item.chunk, "at": "2026-01-01T00:00:00Z"})
        rj.append_many(out, recs)
        t = time.perf_counter()
        model = ReviewModel(out)
        reload_ms = (time.perf_counter() - t) * 1000
        token = "t" * 32
        client = TestClient(create_app(model, token))
        h = {"X-Datakeg-Token": token}

        def get(path):
            r = client.get(path, headers=h)
            assert r.status_code == 200, r.text
            return r

        print(f"entries: {len(model.entries)}; load {load_ms:.0f} ms, load with 1,000 decisions {reload_ms:.0f} ms")
        print(f"{'request':58} {'median ms':>10} {'worst ms':>9} {'shown':>6}")
        cases = [
            ("list, no filter (first 200 rows + all ids)", "/api/pairs?offset=0&limit=200"),
            ("list at position 4,000", "/api/pairs?offset=3950&limit=200"),
            ("filter split=test", "/api/pairs?split=test"),
            ("filter file=docs/page017.md", "/api/pairs?file=docs/page017.md"),
            ("filter status=rejected", "/api/pairs?status=rejected"),
            ("filter kind=dropped reason=dangling", "/api/pairs?kind=reject&reason=dangling"),
            ("text search 'heading limit'", "/api/pairs?q=heading%20limit"),
            ("all filters together", "/api/pairs?split=train&status=pending&kind=row&q=json"),
        ]
        worst_list = 0.0
        for label, path in cases:
            med, worst = timed(lambda: get(path))
            worst_list = max(worst_list, worst)
            print(f"{label:58} {med:10.1f} {worst:9.1f} {get(path).json()['counts']['shown']:6d}")
        pid = ids[123]
        med, worst = timed(lambda: get(f"/api/pair?id={pid}"))
        print(f"{'one pair with its chunk and highlights':58} {med:10.1f} {worst:9.1f}")
        keep_ids = iter(ids[200:260])

        def keep():
            i = next(keep_ids)
            r = client.post("/api/decide", headers=h, json={"id": i, "action": "keep", "version": model.by_id[i].version})
            assert r.status_code == 200, r.text

        med, worst = timed(keep)
        print(f"{'keep (journal append + fsync under the lock)':58} {med:10.1f} {worst:9.1f}")
        edit_ids = iter([i for i in ids[300:] if model.by_id[i].item.origin == "row"][:20])

        def edit():
            i = next(edit_ids)
            e = model.by_id[i]
            r = client.post("/api/decide", headers=h, json={"id": i, "action": "edit", "version": e.version,
                                                            "question": e.question.replace("How does", "In what way does")})
            assert r.status_code in (200, 422), r.text

        edit()  # loads numpy/scipy/scikit-learn once (the server preloads them at start)
        med, worst = timed(edit, 19)
        print(f"{'edit (quality gates + leakage audit vs all pairs)':58} {med:10.1f} {worst:9.1f}")
        t = time.perf_counter()
        counts = merge(out)
        print(f"merge applying {len(rj.read(out))} decisions: {(time.perf_counter() - t) * 1000:.0f} ms ({counts})")
        print(f"listing and filtering: worst {worst_list:.1f} ms (target < 200 ms): "
              f"{'met' if worst_list < 200 else 'NOT met'}")


if __name__ == "__main__":
    main()
