"""Scheduling one document: split rounds, gates and backfill.

Per document the splits run in rounds: every chunk's train requests, then every chunk's valid
requests (told to avoid this chunk's questions and the most similar train questions of the whole
document, which is complete by then), then test (avoiding train and valid). Inside a round the
chunks run in parallel; a deterministic pass in chunk order then drops near duplicates between
chunks and asks again for what is missing. So the output is the same whatever the concurrency,
and valid/test are always checked against every train question of the document.

A request's journal key holds its exact prompt and how often that prompt was asked before for the
same chunk and split, so a rerun replays every request it already paid for, in whatever order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from datakeg.curation.quality import Gate, grounding_for, normalize_question, turn_norms
from datakeg.curation.taught import is_taught
from datakeg.dataset.records import Pair, Reject
from datakeg.dataset.splits import SPLITS
from datakeg.generation.callbacks import Callbacks
from datakeg.generation.calls import Caller
from datakeg.generation.journal import request_key
from datakeg.generation.judge import Judge
from datakeg.generation.parsing import ParseError, pairs_schema, parse_pairs
from datakeg.generation.planning import TOKENS_PER_PAIR, DocPlan, batches, spare_pairs
from datakeg.generation.prompts import avoid_list, build_messages
from datakeg.generation.task import load_task
from datakeg.providers.base import ChatRequest
from datakeg.settings import Settings


@dataclass
class Slot:
    """What one chunk collected for one split."""

    pairs: list[Pair] = field(default_factory=list)
    calls: int = 0
    asked: Counter = field(default_factory=Counter)  # how often each exact prompt was asked
    where: tuple = ()  # (chunk index, split): part of every journal key, so identical chunks never share one
    errors: int = 0
    truncated: int = 0  # replies cut off (finish_reason: length)
    cap: int | None = None  # most pairs per request after a cut-off reply (halved at each one)
    dropped: Counter = field(default_factory=Counter)
    rejects: list[Reject] = field(default_factory=list)
    judge_calls: int = 0  # judge requests made for this chunk and split (replayed ones included)
    judged: int = 0  # pairs the judge scored
    # pairs that passed every gate beyond the target (--spares): they replace pairs removed later
    # (duplicate check, leakage audit) without a request; unused ones are discarded
    reserve: list[Pair] = field(default_factory=list)
    spares_used: int = 0
    # requests that had to follow one another up to this slot's latest one: its own, one after the
    # other, and those of the rounds and passes it waited for (see DocResult.chain)
    chain: int = 0


@dataclass
class DocResult:
    """One document's outcome: the pairs per chunk and split, and what was dropped or failed."""

    plan: DocPlan
    slots: list[dict[str, Slot]]
    # (chunk, index of a train pair) -> rewordings of its question (--paraphrases)
    paraphrases: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    def pairs(self, split: str) -> list[Pair]:
        return [p for s in self.slots for p in s[split].pairs]

    @property
    def chain(self) -> int:
        """The longest chain of requests (replayed ones take no time and do not count) that had to
        follow one another in this document: at latency L per request, no concurrency gets it done in
        less than chain x L."""
        return max((s[sp].chain for s in self.slots for sp in SPLITS), default=0)

    def wait_for(self, i: int, split: str, chain: int) -> None:
        """Chunk ``i``'s next request for ``split`` follows a chain of ``chain`` requests."""
        slot = self.slots[i][split]
        slot.chain = max(slot.chain, chain)

    @property
    def delivered(self) -> dict[str, int]:
        return {sp: sum(len(s[sp].pairs) for s in self.slots) for sp in SPLITS}

    @property
    def dropped(self) -> Counter:
        c = Counter()
        for s in self.slots:
            for sp in SPLITS:
                c.update(s[sp].dropped)
        return c

    @property
    def rejects(self) -> list[Reject]:
        return [r for sp in SPLITS for s in self.slots for r in s[sp].rejects]

    def short_chunks(self) -> list[tuple[int, str, int, int]]:
        """(chunk, split, delivered, target) for every chunk and split below target."""
        return [(i, sp, len(s[sp].pairs), self.plan.targets[i][sp]) for i, s in enumerate(self.slots)
                for sp in SPLITS if len(s[sp].pairs) < self.plan.targets[i][sp]]


class DocumentRunner:
    def __init__(self, caller: Caller, settings: Settings, callbacks: Callbacks, judge=None, task=None):
        self.caller = caller
        self.settings = settings
        self.cb = callbacks
        self.task = task or load_task(settings.task)
        self.schema = pairs_schema(settings.reasoning, [k.name for k in self.task.kinds], self.task.turns)
        self.judge = Judge.build(caller, settings, callbacks, judge)  # None without --judge-model

    # -- one request ------------------------------------------------------------------------
    def _ask(self, dp: DocPlan, i: int, split: str, count: int, avoid: list[str], slot: Slot,
             kinds: list[dict] = (), taught: list[str] | None = None) -> list[Pair] | None:
        chunk = dp.chunks[i]
        t = self.task
        # audiences take turns: over the dataset's chunks, the splits and each chunk's requests
        audience = t.audiences[(dp.first_chunk + i + SPLITS.index(split) + slot.calls) % len(t.audiences)] \
            if t.audiences else ""
        messages = build_messages(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                  count=count, split=split, language=dp.language, avoid=avoid,
                                  reasoning=self.settings.reasoning, task=t, kinds=kinds, audience=audience,
                                  taught=taught)
        per_pair = TOKENS_PER_PAIR * (3 if self.settings.reasoning else 2) * t.turns
        task = {"excerpt": chunk.text, "count": count, "split": split, "language": dp.language, "avoid": avoid,
                "reasoning": self.settings.reasoning}
        # The journal key holds the chunk and split (two chunks with the same text are different
        # work) and counts how often this exact prompt was asked before for them, not the call's position: a rerun in which an earlier request now succeeds (and so
        # shifts the positions) still replays every prompt it already paid for.
        prompt_id = request_key(messages=messages)
        asked = slot.asked[prompt_id]
        # --seed: the same prompt asked again gets the next seed (seed + attempt), so a retry can
        # bring something new; still the same seeds on every run
        seed = None if self.settings.seed is None else self.settings.seed + asked
        request = ChatRequest(messages, schema=self.schema, temperature=self.settings.temperature,
                              max_tokens=200 + per_pair * count, seed=seed, task=task)
        ordinal = [*slot.where, asked]
        slot.asked[prompt_id] += 1
        slot.calls += 1
        reply = self.caller.call(request, ordinal, count, chunk=f"{dp.doc.relpath}#{i}")
        slot.chain += 0 if reply.replayed else 1  # a replayed call takes no time
        where = dict(source=dp.doc.relpath, chunk=chunk.index, split=split)
        if reply.truncated:
            # never final: kept in rejects with its reason; the next request asks for fewer pairs
            slot.truncated += 1
            slot.cap = max(1, count // 2)
            slot.rejects.append(Reject("truncated_reply", reason="finish_reason: length", error=reply.error,
                                       raw=reply.raw, **where))
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): reply cut off (finish_reason: "
                               f"length) asking for {count} pair(s); asking for {slot.cap} at a time")
            return None
        if reply.text is None:
            slot.errors += 1
            slot.rejects.append(Reject("request_failed", error=reply.error, **where))
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): request failed: {reply.error}")
            return None
        try:
            pairs = parse_pairs(reply.text)
            # later turns only where the task asks for them (a stray "followups" never makes a row multi-turn)
            return pairs if t.turns > 1 else [replace(p, followups=()) if p.followups else p for p in pairs]
        except ParseError as exc:
            with self.caller.lock:
                self.caller.stats.unparseable += 1
            slot.rejects.append(Reject("unparseable_reply", error=str(exc), raw=reply.text, **where))
            self.cb.on_warning(f"{dp.doc.relpath} chunk {chunk.index} ({split}): unparseable reply kept in "
                               "rejects.jsonl")
            return None

    # -- one chunk, one split ---------------------------------------------------------------
    def taught(self, res: DocResult, i: int, split: str) -> list[str] | None:
        """``--held-out taught``: the train answers of chunk ``i`` for a valid/test request (None for
        train, without the option, or when the chunk has no train pair: the usual prompt then)."""
        if self.settings.held_out != "taught" or split == "train":
            return None
        return [p.answer for p in res.slots[i]["train"].pairs] or None

    def fill(self, dp: DocPlan, i: int, split: str, slot: Slot, gate: Gate, mine: list[Pair],
             elsewhere: list[str], max_calls: int, pinned: list[str] = (), taught: list[str] | None = None) -> None:
        """Ask until ``slot`` holds its target or ``max_calls`` more calls were made. ``pinned``
        questions are always in the avoid list (questions removed by the leakage audit). ``taught``:
        the chunk's train answers (``--held-out taught``): the prompt lists them and a pair whose
        answer they do not teach (:func:`datakeg.curation.taught.is_taught`) is dropped as "untaught"."""
        s = self.settings
        want = dp.targets[i][split]
        spare = spare_pairs(want, s.spares)
        chunk = dp.chunks[i]
        grounding = grounding_for(chunk.text)
        made = 0
        progress = False
        held: list[tuple[Pair, str]] = []  # passed every gate, but of a kind this chunk has enough of
        # ``max_calls`` requests, and more as long as each one adds usable pairs (a model that keeps
        # returning half of what it is asked still gets there); at most ``want`` extra in all
        while len(slot.pairs) < want and (made < max_calls or progress) and made < max_calls + want:
            remaining = want - len(slot.pairs)
            size = min(s.batch_size, slot.cap or s.batch_size)  # fewer after a cut-off reply
            count = batches(remaining, size)[0]
            if count == remaining:  # the last batch: spares ride along where it has room (never a request)
                count = min(size, count + max(0, spare - len(slot.reserve)))
            pin = list(dict.fromkeys(pinned))[: s.avoid_cap // 3]
            avoid = pin + avoid_list(mine, elsewhere, chunk.text, s.avoid_cap - len(pin))
            made += 1
            asked = self.kinds_to_ask(dp, i, split, slot, count)
            pairs = self._ask(dp, i, split, count, avoid, slot, asked, taught)
            progress = False
            if pairs is None:
                continue
            batch: list[str] = []
            passed: list[tuple[Pair, str]] = []
            for pair in pairs:
                reason = gate.check(pair, grounding, batch) or self.task_check(pair, grounding, gate, batch) \
                    or ("over_count" if len(passed) >= count else None)
                if reason is None and taught is not None and not is_taught(pair.question, pair.answer, taught):
                    reason = "untaught"
                if reason:
                    self._drop(slot, dp, i, split, pair, reason)
                    continue
                norm = normalize_question(pair.question)
                batch.extend(turn_norms(pair, norm))  # every user turn: a later pair may repeat none
                passed.append((pair, norm))
            kept = 0
            for pair, norm, scores in self._judged(dp, i, split, passed, slot):
                if self.task.kinds:  # its recognised kind (None: unrecognised, taken as it comes)
                    pair = replace(pair, kind=self.task.recognise(pair.question, pair.kind))
                    # a kind this chunk already has enough of waits (the next request asks for the rest)
                    if pair.kind is not None and len(slot.pairs) < want \
                            and self.kind_missing(dp, i, split, slot)[pair.kind] <= 0:
                        held.append((pair, norm))
                        continue
                gate.accept_turns(turn_norms(pair, norm))
                if len(slot.pairs) >= want:
                    slot.reserve.append(pair)
                    continue
                slot.pairs.append(pair)
                mine.append(pair)
                kept += 1
            progress = kept > 0
            self.cb.on_pairs(kept)
        # pairs of a kind over its quota fill what the model did not deliver of the kinds asked
        # (never fewer pairs than without a mix); the rest are dropped as off the mix
        for pair, norm in held:
            norms = turn_norms(pair, norm)
            if len(slot.pairs) < want and not gate.is_duplicate_turns(norms):
                gate.accept_turns(norms)
                slot.pairs.append(pair)
                mine.append(pair)
                self.cb.on_pairs(1)
            else:
                self._drop(slot, dp, i, split, pair, "off_mix")

    # -- the task: kinds, turns, answer style -------------------------------------------------
    def kind_missing(self, dp: DocPlan, i: int, split: str, slot: Slot) -> Counter:
        """Per kind, the pairs chunk ``i`` still lacks for ``split`` (its dealt quota less the pairs
        of that kind it holds)."""
        quota = Counter(dp.kinds[i][split]) if dp.kinds else Counter()
        quota.subtract(p.kind for p in slot.pairs if p.kind)
        return quota

    def kinds_to_ask(self, dp: DocPlan, i: int, split: str, slot: Slot, count: int) -> list[dict]:
        """The kinds one request asks for: what the chunk still lacks, in the task's order, topped up
        (spares) by the kinds in the share of their weights."""
        t = self.task
        if not t.kinds:
            return []
        missing = self.kind_missing(dp, i, split, slot)
        names = [k.name for k in t.kinds]
        wanted = [n for n in names for _ in range(max(0, missing[n]))][:count]
        mix = t.mix
        while len(wanted) < count:  # spares, or a chunk whose quota is met: the kind most below its share
            n = len(wanted) + 1
            wanted.append(max(names, key=lambda k: (mix[k] * n - wanted.count(k), -names.index(k))))
        counts = Counter(wanted)
        return [{"name": k.name, "description": k.description, "count": counts[k.name]} for k in t.kinds
                if counts[k.name]]

    def task_check(self, pair: Pair, grounding, gate: Gate, batch: list[str] = ()) -> str | None:
        """The task's own gates: the number of turns, each later turn through the gates (not
        ``dangling``: a follow-up may refer back; a duplicate of any question the document holds,
        any turn of it, of an earlier turn of its conversation or of a user turn kept from the same
        reply, ``batch``), the answers' length bounds."""
        t = self.task
        if t.turns > 1:
            if len(pair.followups) != t.turns - 1:
                return "wrong_turns"
            earlier = [normalize_question(pair.question)]
            for q, a in pair.followups:
                reason = gate.check_turn(q, a, grounding, earlier + list(batch))
                if reason:
                    return f"{reason}_followup"
                earlier.append(normalize_question(q))
        if (t.min_words or t.max_words) and not all(t.answer_length_ok(a) for _, a in pair.user_turns):
            return "answer_length"
        return None

    def promote(self, res: DocResult, i: int, split: str, gate: Gate, kept: list[str] | None = None) -> int:
        """Fill what chunk ``i`` lacks for ``split`` from its reserve, in reserve order; a spare that
        ``gate`` (or ``kept``) finds a duplicate of is dropped. A promoted question is added to
        ``kept`` when given, else accepted by ``gate``. Returns how many were promoted."""
        slot = res.slots[i][split]
        want = res.plan.targets[i][split]
        promoted = 0
        while len(slot.pairs) < want and slot.reserve:
            pair = slot.reserve.pop(0)
            norms = turn_norms(pair)
            if gate.is_duplicate_turns(norms, kept or []):
                self._drop(slot, res.plan, i, split, pair, "duplicate")
                continue
            (kept.extend if kept is not None else gate.accept_turns)(norms)
            slot.pairs.append(pair)
            slot.spares_used += 1
            promoted += 1
        return promoted

    def _drop(self, slot: Slot, dp: DocPlan, i: int, split: str, pair: Pair, reason: str,
              scores: dict | None = None) -> None:
        slot.dropped[reason] += 1
        slot.rejects.append(Reject("dropped_pair", reason=reason, source=dp.doc.relpath, chunk=dp.chunks[i].index,
                                   split=split, question=pair.question, answer=pair.answer, scores=scores,
                                   followups=later_turns(pair)))

    def _judged(self, dp: DocPlan, i: int, split: str, passed: list[tuple[Pair, str]], slot: Slot):
        """The pairs of ``passed`` the judge keeps (all of them without a judge), with their scores;
        the others are dropped as ``judge`` (scored below the threshold) or ``unjudged``."""
        if self.judge is None or not passed:
            return [(p, n, None) for p, n in passed]
        chunk = dp.chunks[i]
        scores = self.judge.score(source=dp.doc.relpath, breadcrumb=chunk.breadcrumb, chunk=chunk.text,
                                  pairs=[p for p, _ in passed], slot=slot)
        keep = []
        for (pair, norm), sc in zip(passed, scores):
            if sc is None:
                self._drop(slot, dp, i, split, pair, "unjudged")
                continue
            slot.judged += 1
            if sc["score"] < self.settings.judge_threshold:
                self._drop(slot, dp, i, split, pair, "judge", sc)
                continue
            keep.append((replace(pair, scores=sc) if self.settings.keep_scores else pair, norm, sc))
        return keep

    def gate(self, questions: list[str]) -> Gate:
        s = self.settings
        return Gate(dedupe_threshold=s.dedupe_threshold, grounding_threshold=s.effective_grounding,
                    accepted=[normalize_question(q) for q in questions])

    # -- one document -----------------------------------------------------------------------
    def links_left(self, dp: DocPlan, split: str) -> int:
        """Requests that must still follow one another in ``dp`` from the round of ``split`` on: per
        round, the most batches one chunk needs."""
        return sum(max((len(batches(t[sp], self.settings.batch_size)) for t in dp.targets), default=0)
                   for sp in SPLITS[SPLITS.index(split):])

    def priority(self, dp: DocPlan, split: str) -> float:
        """Pool priority of a round's work (lower runs first): the document with the longest chain of
        requests still ahead of it first (its chain is the run's critical path; a document in its
        test round waits for one in its train round), the bigger document among equals."""
        return -(self.links_left(dp, split) * 1e9 + dp.total)

    def run(self, dp: DocPlan, pool) -> DocResult:
        """All splits of one document. ``pool.submit(fn, *args, priority=...)`` runs the chunks'
        work (lower priority values first)."""
        s = self.settings
        n = len(dp.chunks)
        res = DocResult(dp, [{split: Slot(where=(i, split)) for split in SPLITS} for i in range(n)])
        slots = res.slots
        self.cb.on_document_start(dp)

        for r, split in enumerate(SPLITS):
            earlier = SPLITS[:r]
            start = res.chain  # every request of the round waits for the earlier rounds
            for i in range(n):
                res.wait_for(i, split, start)

            def work(i: int, split: str = split, earlier: tuple = earlier) -> None:
                if dp.targets[i][split] == 0:
                    return
                mine = self.own(res, i, earlier[-1]) if earlier else []
                # checked against every question of the earlier splits (final by now) and this chunk's
                gate = self.gate(self.others(res, i, earlier, turns=True) + turn_questions(mine))
                planned = len(batches(dp.targets[i][split], s.batch_size))
                # the earlier splits' spares are avoided too where the avoid list has room (the list
                # keeps the latest of this chunk's questions), so that one can still replace a pair later
                spares = [p for sp in earlier for p in slots[i][sp].reserve]
                self.fill(dp, i, split, slots[i][split], gate, spares + list(mine), self.others(res, i, earlier),
                          planned + s.max_attempts, taught=self.taught(res, i, split))

            # biggest jobs first, so the round's tail is short (the order of results does not matter)
            order = sorted(range(n), key=lambda i: -dp.targets[i][split])
            priority = self.priority(dp, split)
            for f in [pool.submit(work, i, priority=priority) for i in order]:
                f.result()
            self.reconcile(res, split, pool, priority - 1e9)  # a refill is one more link
        return res

    def reconcile(self, res: DocResult, split: str, pool, priority: float = 0.0, after: int = 0) -> None:
        """Near duplicates between the chunks of one round go (a deterministic pass in chunk order),
        then the chunks that lost pairs ask again, in parallel, each against the same snapshot of
        the document's questions; the new pairs are checked the same way, up to ``max_attempts``
        passes. Nothing depends on which request finishes first. ``after``: the chain of requests
        the pass also waits for beyond this document (see :attr:`DocResult.chain`)."""
        s = self.settings
        n = len(res.slots)
        earlier = SPLITS[:SPLITS.index(split)]
        gate = self.gate(self.others(res, -1, earlier, turns=True))
        # a spare is checked against every other split of the document (after the split rounds, e.g.
        # in the leakage audit's backfill, the later splits exist too; a spare was never shown them)
        spare_gate = self.gate(self.others(res, -1, tuple(sp for sp in SPLITS if sp != split), turns=True))
        kept_norms: list[str] = []
        checked = [0] * n
        for attempt in range(s.max_attempts + 1):
            lost = []
            for i in range(n):
                slot = res.slots[i][split]
                survivors = slot.pairs[:checked[i]]
                for p in slot.pairs[checked[i]:]:
                    norms = turn_norms(p)
                    if gate.is_duplicate_turns(norms, kept_norms):
                        slot.dropped["duplicate"] += 1
                        slot.rejects.append(Reject("dropped_pair", reason="duplicate", source=res.plan.doc.relpath,
                                                   chunk=i, split=split, question=p.question, answer=p.answer,
                                                   followups=later_turns(p)))
                        continue
                    kept_norms.extend(norms)
                    survivors.append(p)
                shrank = len(survivors) < len(slot.pairs)
                slot.pairs = survivors
                if shrank:  # spares first (no request), checked like the rest
                    self.promote(res, i, split, spare_gate, kept_norms)
                    if len(slot.pairs) < res.plan.targets[i][split]:
                        lost.append(i)
                checked[i] = len(slot.pairs)
            if not lost or attempt == s.max_attempts:
                return
            snapshot = {i: (self.others(res, i, SPLITS), self.others(res, i, SPLITS, turns=True)) for i in lost}
            start = max(res.chain, after)  # the pass waits for the whole round (``after``: and more)
            for i in lost:
                res.wait_for(i, split, start)
            futures = [pool.submit(self.refill, res, i, split, [], 1, *snapshot[i], priority=priority - 0.5)
                       for i in lost]
            for f in futures:
                f.result()

    def refill(self, res: DocResult, i: int, split: str, avoid_also: list[str], max_calls: int,
               others: list[str] | None = None, others_turns: list[str] | None = None) -> None:
        """Ask chunk ``i`` again for what ``split`` is missing, checked against every question the
        document holds in any split (``others``: a snapshot of the other chunks' questions, so that
        chunks can refill in parallel deterministically; ``others_turns``: the same with the later
        turns of conversations, which the gate checks against too), and told to avoid ``avoid_also``
        (questions removed elsewhere)."""
        if others is None:
            others = self.others(res, i, SPLITS)
        if others_turns is None:
            others_turns = self.others(res, i, SPLITS, turns=True)
        mine = [p for sp in SPLITS for p in res.slots[i][sp].pairs]  # every split: none may come back
        self.fill(res.plan, i, split, res.slots[i][split], self.gate(others_turns + turn_questions(mine)
                                                                     + list(avoid_also)),
                  mine, others, max_calls, pinned=avoid_also, taught=self.taught(res, i, split))

    @staticmethod
    def own(res: DocResult, i: int, upto: str) -> list[Pair]:
        return [p for sp in SPLITS[:SPLITS.index(upto) + 1] for p in res.slots[i][sp].pairs]

    @staticmethod
    def others(res: DocResult, i: int, splits: tuple[str, ...], turns: bool = False) -> list[str]:
        """The questions of every chunk but ``i`` in ``splits``; ``turns``: every user turn of a
        conversation, not only the first (what the duplicate gate checks against; the avoid lists
        of the prompts name first questions)."""
        pairs = [p for j, s in enumerate(res.slots) if j != i for sp in splits for p in s[sp].pairs]
        return turn_questions(pairs) if turns else [p.question for p in pairs]


def later_turns(pair: Pair) -> list[dict] | None:
    """A conversation's later turns as a reject records them (None for a single-turn pair)."""
    return [{"question": q, "answer": a} for q, a in pair.followups] or None


def turn_questions(pairs) -> list[str]:
    """The question of every user turn of ``pairs`` (first turns and the later turns of conversations)."""
    return [q for p in pairs for q in ([p.question, *(q for q, _ in p.followups)] if p.followups else [p.question])]
