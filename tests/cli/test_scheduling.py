"""Scheduling and spares: a removed pair is replaced from its chunk's reserve without a request,
and the documents with the longest chain of requests ahead of them go first.

The fake server writes questions about consecutive 6-word spans of the excerpt, so two texts that
open with the same six words get the same first question: a planted repeat."""

import json
import random
import re
from collections import Counter

import pytest
from click.testing import CliRunner

from datakeg.cli import cli
from datakeg.testing.fake_server import FakeLLMServer, answer_prompt

SHARED = "Shared words open every page here."
_DOC = re.compile(r"Document: (\S+)")
_SPLIT = re.compile(r"for the (train|valid|test) set")


def _prose(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    words = sorted({"".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))
                    for _ in range(2000)})
    return " ".join(" ".join(rng.sample(words, 7)).capitalize() + "." for _ in range(sentences))


def _gen(srv, src, out, *args):
    return CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url, "-q",
                                    "-m", "fake-model", *args])


def _prompt(req) -> str:
    return "\n".join(m["content"] for m in req["body"]["messages"])


def _asked(srv) -> Counter:
    """Chat requests the server received, per (document, split): the independent count."""
    return Counter((_DOC.search(_prompt(r)).group(1), _SPLIT.search(_prompt(r)).group(1)) for r in srv.requests
                   if _SPLIT.search(_prompt(r)))


def _replied(srv, doc: str, split: str) -> list[str]:
    qs = []
    for r in srv.requests:
        p = _prompt(r)
        if _SPLIT.search(p) and _SPLIT.search(p).group(1) == split and _DOC.search(p).group(1) == doc:
            # what the (deterministic) server answered to that prompt
            qs += [x["question"] for x in json.loads(answer_prompt(p, False, set()))["pairs"]]
    return qs


def _questions(path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("layout", ["two documents", "two chunks"])
def test_a_removed_repeat_is_replaced_by_a_spare_without_another_request(tmp_path, layout):
    """The same first question in two documents (the leakage audit removes the second) or in two
    chunks of one document (the duplicate check after the round removes it). With --spares the
    pair is replaced from the reserve of the same reply: one request per chunk and split, targets
    met. With --spares 0 the same run must ask again."""
    src = tmp_path / "docs"
    src.mkdir()
    if layout == "two documents":
        (src / "a.md").write_text(f"{SHARED} {_prose(1, 9)}\n")
        (src / "b.md").write_text(f"{SHARED} {_prose(2, 9)}\n")
        loser, args, first = "b.md", [], f"What is said about {SHARED}?"
    else:
        (src / "b.md").write_text(f"## Notes\n\n{SHARED} {_prose(1, 9)}\n\n## Notes\n\n{SHARED} {_prose(2, 9)}\n")
        loser, args, first = "b.md", ["--chunk-size", "600"], "What is said about Notes Shared words open every page?"
    runs = {}
    for spares in ("0.1", "0"):
        out = tmp_path / f"out-{spares}"
        with FakeLLMServer() as srv:
            assert _gen(srv, src, out, "--spares", spares, *args).exit_code == 0
            m = json.loads((out / "manifest.json").read_text())
            runs[spares] = (srv, m, out)
            assert m["totals"]["delivered"] == m["totals"]["target"]
            assert m["totals"]["requests"] == len(srv.requests)
            kept = [q for f in m["files"] for q in _questions(out / f"{f['output']}_train.jsonl")]
            assert kept.count(first) == 1  # the repeat went
            assert len(set(kept)) == len(kept)
    srv, m, out = runs["0.1"]
    chunks = {f["path"]: len(f["chunks"]) for f in m["files"]}
    assert chunks[loser] == (2 if layout == "two chunks" else 1)
    # one request per chunk and split, for every document: nothing was asked again
    assert _asked(srv) == Counter({(f, sp): chunks[f] for f in chunks for sp in ("train", "valid", "test")})
    assert m["totals"]["spares"]["used"] >= 1
    # the replacement came from the reply that was already paid for
    assert set(_questions(out / "b_train.jsonl")) <= set(_replied(srv, loser, "train"))
    srv0, m0, _ = runs["0"]
    assert m0["totals"]["spares"] == {"used": 0, "unused": 0}
    assert _asked(srv0)[(loser, "train")] > chunks[loser]  # without spares: a backfill request


def test_documents_with_the_longest_chain_ahead_go_first(tmp_path):
    """One big document (six chunks) and six small ones, each with pairs in all three splits, two
    request slots: every small document's train request is sent before the big one's first valid
    request, since the small documents still have three rounds ahead of them and the big one two
    (the old order, biggest document first, sent the big one's valid and test rounds first)."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "big.md").write_text("\n\n".join(f"## Part {k}\n\n{_prose(10 + k, 6)}" for k in range(6)) + "\n")
    for k in range(6):
        (src / f"small{k}.md").write_text(f"# Small {k}\n\n{_prose(20 + k, 6)}\n")
    with FakeLLMServer(latency=0.02) as srv:
        result = _gen(srv, src, tmp_path / "out", "-c", "2", "--chunk-size", "600", "--pairs-per-1k", "20")
        assert result.exit_code == 0, result.output
        order = [(_DOC.search(_prompt(r)).group(1), _SPLIT.search(_prompt(r)).group(1))
                 for r in sorted(srv.requests, key=lambda r: r["at"]) if _SPLIT.search(_prompt(r))]
    first_big_valid = order.index(("big.md", "valid"))
    small_train = [n for n, (doc, sp) in enumerate(order) if doc.startswith("small") and sp == "train"]
    assert len(small_train) == 6 and max(small_train) < first_big_valid


def test_spares_keep_the_output_independent_of_concurrency_and_a_rerun_pays_nothing(tmp_path):
    """With spares in play (a planted repeat across documents and one across chunks) the files
    are byte-identical at concurrency 1 and 8 against a server that answers in random order, and
    a rerun replays every request from the journal."""
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text(f"## Notes\n\n{SHARED} {_prose(1, 9)}\n\n## Notes\n\n{SHARED} {_prose(3, 9)}\n")
    (src / "b.md").write_text(f"{SHARED} {_prose(2, 9)}\n")
    (src / "c.md").write_text(f"Notes {SHARED} {_prose(4, 12)}\n")
    outs = {}
    for c in ("1", "8"):
        out = tmp_path / f"c{c}"
        with FakeLLMServer(jitter=0.02) as srv:
            assert _gen(srv, src, out, "-c", c, "--spares", "0.1", "--chunk-size", "600").exit_code == 0
        m = json.loads((out / "manifest.json").read_text())
        assert m["totals"]["spares"]["used"] >= 2 and m["totals"]["delivered"] == m["totals"]["target"]
        outs[c] = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
        with FakeLLMServer() as srv:
            assert _gen(srv, src, out, "-c", c, "--spares", "0.1", "--chunk-size", "600").exit_code == 0
            assert srv.requests == []
    assert outs["1"] == outs["8"]


def test_a_free_request_slot_goes_to_the_most_urgent_waiting_request(tmp_path):
    """More workers than request slots: while the only slot is busy, requests of priority 5, 3
    and 1 start waiting for it, in that order. The server must receive them most urgent first
    (1, 3, 5), not in the order they started waiting."""
    import threading
    import time

    from datakeg.generation.calls import Caller, Limits
    from datakeg.generation.journal import Journal
    from datakeg.providers.base import ChatRequest
    from datakeg.providers.openai_compat import OpenAICompatProvider
    from datakeg.generation.workers import PriorityPool

    with FakeLLMServer(latency=0.3) as srv:
        provider = OpenAICompatProvider(model="fake-model", base_url=srv.url)
        caller = Caller(provider, Journal(tmp_path), Limits(), 1, lambda *_: None)
        pool = PriorityPool(4)
        waiting = threading.Semaphore(0)

        def ask(name: str):
            waiting.release()
            request = ChatRequest([{"role": "user", "content": f"Document: {name}\nfor the train set"}],
                                  temperature=0.0)
            return caller.call(request, 0)

        futures = [pool.submit(ask, "first", priority=0)]
        waiting.acquire()
        time.sleep(0.05)  # "first" holds the slot
        for name, priority in (("five", 5), ("three", 3), ("one", 1)):
            futures.append(pool.submit(ask, name, priority=priority))
            waiting.acquire()
            time.sleep(0.05)  # each one is waiting for the slot before the next is submitted
        assert all(f.result().text is not None for f in futures)
        pool.shutdown()
        provider.close()
        order = [_DOC.search(_prompt(r)).group(1) for r in sorted(srv.requests, key=lambda r: r["at"])]
    assert order == ["first", "one", "three", "five"]


_SECTION = re.compile(r"Section: (.*)")


def test_the_manifest_reports_the_longest_chain_of_requests_that_followed_one_another(tmp_path):
    """Counted on the server's own log. (1) Documents of one chunk each: all of a document's
    requests follow one another (split after split, and again when a reply falls short: the
    ``fewer`` fault), and documents run side by side, so the chain is the most requests one
    document got. (2) One document of three chunks: chunks run side by side, so per split round
    the chain grows by the most requests one chunk got, not by all of them."""
    src = tmp_path / "one"
    src.mkdir()
    for k in range(3):
        (src / f"d{k}.md").write_text(f"# Page {k}\n\n{_prose(30 + k, 14)}\n")
    with FakeLLMServer(faults=["fewer:3"]) as srv:
        assert _gen(srv, src, tmp_path / "o1", "-c", "4").exit_code == 0
        per_doc = Counter(_DOC.search(_prompt(r)).group(1) for r in srv.requests if _SPLIT.search(_prompt(r)))
        short = [r for r in srv.requests if "fewer" in r["faults"]]
    m = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert short, "no reply fell short: the test proves nothing"
    assert all(len(f["chunks"]) == 1 for f in m["files"]) and not m["leakage_audit"]["removed"]
    assert max(per_doc.values()) > 3  # a short reply was asked again, after it
    assert m["totals"]["request_chain"] == max(per_doc.values())

    src = tmp_path / "three"
    src.mkdir()
    (src / "big.md").write_text("\n\n".join(f"## Part {k}\n\n{_prose(40 + k, 6)}" for k in range(3)) + "\n")
    with FakeLLMServer(jitter=0.01) as srv:
        assert _gen(srv, src, tmp_path / "o2", "-c", "8", "--chunk-size", "600", "--batch-size", "2",
                    "--pairs-per-1k", "15").exit_code == 0
        per_round = Counter((_SECTION.search(_prompt(r)).group(1), _SPLIT.search(_prompt(r)).group(1))
                            for r in srv.requests if _SPLIT.search(_prompt(r)))
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert len(m["files"][0]["chunks"]) == 3 and not m["totals"]["dropped"]  # no refill after a round
    chain = sum(max(n for (_, sp), n in per_round.items() if sp == split) for split in ("train", "valid", "test"))
    assert m["totals"]["request_chain"] == chain < m["totals"]["requests"]
    assert max(n for (_, sp), n in per_round.items() if sp == "train") >= 2  # batches of one chunk in a row


def test_the_request_chain_counts_the_leakage_audits_backfill_rounds(tmp_path):
    """Two documents with the same text: the audit removes repeats and leaks across them and
    backfills, in rounds that each wait for every document, and the chain counts those links too.
    Truth from the server's clock, with request slots to spare: a request that waited for another
    arrived at least a latency after it, so the chain is the longest run of requests each arriving
    a latency or more after the one before."""
    src = tmp_path / "same"
    src.mkdir()
    for k in range(2):
        (src / f"d{k}.md").write_text(f"# Page\n\n{_prose(7, 14)}\n")
    latency = 0.2
    with FakeLLMServer(latency=latency) as srv:
        assert _gen(srv, src, tmp_path / "o", "-c", "8").exit_code == 0
        per_doc = Counter(_DOC.search(_prompt(r)).group(1) for r in srv.requests if _SPLIT.search(_prompt(r)))
        arrivals = sorted(r["at"] for r in srv.requests)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["leakage_audit"]["removed"] and m["leakage_audit"]["rounds"] >= 2  # it backfilled, more than once
    assert max(per_doc.values()) > 3  # the backfill asked again after the document's three rounds
    longest = []
    for k, t in enumerate(arrivals):
        longest.append(1 + max((longest[j] for j in range(k) if t - arrivals[j] >= 0.9 * latency), default=0))
    assert m["totals"]["request_chain"] == max(longest) > max(per_doc.values())  # > : the rounds' barrier
