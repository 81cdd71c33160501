"""The judge pass: a second model scores the pairs that passed the deterministic gates.

For every reply, the pairs that passed the gates go to the judge in batches of at most
``JUDGE_BATCH`` with the chunk. It scores each 1-5 on faithfulness to the chunk, a standalone
question and usefulness, with a short reason; the pair's score is the lowest of the three, and a
pair below ``--judge-threshold`` is dropped (reason ``judge``) and backfilled like any other drop.

Judge calls go through a :class:`JudgeCaller`: the run's :class:`~datakeg.generation.calls.Caller` with the
judge's provider, sharing its journal (a rerun replays the judge's answers), budget and accounting
(``--max-*`` count judge calls too), request slots (concurrency) and stop. A judge request that
fails or whose reply cannot be read is asked once more; if that fails too its pairs are dropped as
``unjudged`` (never accepted unscored), the failure is counted, and a rerun asks again.
"""

from __future__ import annotations

import json
import re

from datakeg.dataset.records import Pair
from datakeg.generation.calls import Caller
from datakeg.generation.journal import request_key
from datakeg.generation.prompts import (
    JUDGE_CRITERIA,
    build_judge_messages,
    judge_schema,
)
from datakeg.providers.base import ChatRequest, Provider

JUDGE_BATCH = 15  # most pairs scored in one judge request
TRIES = 2  # judge requests per batch before its pairs are dropped as unjudged


class JudgeCaller(Caller):
    """A :class:`Caller` for the judge's provider that shares everything else with ``parent``."""

    def __init__(self, parent: Caller, provider: Provider):  # super().__init__ is not called on purpose
        from datakeg.generation.calls import Endpoint

        self.__dict__.update(parent.__dict__)
        self.parent = parent
        self.provider = provider
        # its own endpoint (the judge's server, with the run's per-server concurrency); journal,
        # budget, stats and the slot lock are the parent's
        self.endpoints = [Endpoint(provider, parent.endpoints[0].capacity)]
        self._waiters = []  # requests waiting for a slot of the judge's own endpoint (not the parent's)
        self.identity = {**provider.fingerprint(), "role": "judge"}

    @property
    def stopped(self):
        return self.parent.stopped

    @stopped.setter
    def stopped(self, value):
        self.parent.stopped = value

    def stop(self, exc: BaseException) -> None:
        self.parent.stop(exc)
        with self.lock:
            self._dispatch()  # the judge's waiting requests stop too

    def key(self, request: ChatRequest, ordinal: int) -> str:
        return "judge:" + super().key(request, ordinal)


def parse_scores(text: str, n: int) -> dict[int, dict]:
    """index (1-based) -> {"faithful", "standalone", "useful", "reason", "score"} from a judge reply;
    tolerant of code fences, prose around the JSON, a bare list, and scores given as strings."""
    body = text.strip()
    m = re.search(r"[\[{].*[\]}]", body, re.DOTALL)
    if not m:
        raise ValueError("no JSON in the judge's reply")
    data = json.loads(m.group(0))
    items = data.get("scores", data.get("pairs")) if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None and "index" in data:
        items = [data]
    if not isinstance(items, list):
        raise ValueError("the judge's reply holds no list of scores")
    out: dict[int, dict] = {}
    for pos, item in enumerate(items, 1):
        if not isinstance(item, dict):
            continue
        try:
            index = int(item.get("index", pos))
            values = {c: int(round(float(item[c]))) for c in JUDGE_CRITERIA}
        except (KeyError, TypeError, ValueError):
            continue
        if not 1 <= index <= n or not all(1 <= v <= 5 for v in values.values()):
            continue
        reason = item.get("reason")
        out[index] = {**values, "score": min(values.values()),
                      "reason": " ".join(str(reason).split())[:300] if reason else ""}
    if not out:
        raise ValueError("the judge's reply holds no usable score")
    return out


class Judge:
    def __init__(self, caller: Caller, settings, callbacks):
        self.caller = caller
        self.settings = settings
        self.cb = callbacks
        self.schema = judge_schema()

    @classmethod
    def build(cls, caller: Caller, settings, callbacks, provider=None) -> Judge | None:
        """The run's judge (None without ``--judge-model``). ``provider``: the judge's provider,
        made and checked by :func:`judge_provider` before any work (made here when not given)."""
        if not settings.judge_model:
            return None
        if provider is None:
            provider = judge_provider(settings, caller.provider, callbacks)
        return cls(JudgeCaller(caller, provider), settings, callbacks)

    def score(self, *, source: str, breadcrumb: str, chunk: str, pairs: list[Pair], slot) -> list[dict | None]:
        """The judge's scores of ``pairs`` (None for a pair the judge gave no usable score). Counts
        calls in ``slot.judge_calls`` and failures in ``slot.errors``; ``slot.asked`` numbers
        repeats of the same prompt, so a rerun replays them from the journal."""
        out: list[dict | None] = []
        for start in range(0, len(pairs), JUDGE_BATCH):
            out += self._batch(source, breadcrumb, chunk, pairs[start:start + JUDGE_BATCH], slot)
        return out

    def _batch(self, source, breadcrumb, chunk, pairs, slot) -> list[dict | None]:
        messages = build_judge_messages(source=source, breadcrumb=breadcrumb, chunk=chunk, pairs=pairs)
        prompt_id = "judge:" + request_key(messages=messages)
        error = None
        for _ in range(TRIES):
            asked = slot.asked[prompt_id]
            seed = None if self.settings.seed is None else self.settings.seed + asked  # a retry: the next seed
            request = ChatRequest(messages, schema=self.schema, temperature=0.0, max_tokens=100 + 80 * len(pairs),
                                  seed=seed, task={"kind": "judge"})
            ordinal = [*slot.where, asked]
            slot.asked[prompt_id] += 1
            slot.judge_calls += 1
            reply = self.caller.call(request, ordinal, 0)
            slot.chain += 0 if reply.replayed else 1
            if reply.text is None:
                error = reply.error
                continue
            try:
                found = parse_scores(reply.text, len(pairs))
            except (ValueError, json.JSONDecodeError) as exc:
                error = f"unreadable judge reply: {exc}"
                continue
            return [found.get(k) for k in range(1, len(pairs) + 1)]
        slot.errors += 1
        self.cb.on_warning(f"{source} ({breadcrumb or 'top'}): judge request failed: {error}; its "
                           f"{len(pairs)} pair(s) are dropped as unjudged (a rerun asks again)")
        return [None] * len(pairs)


def judge_provider(settings, generation_provider, callbacks):
    """The judge's provider (None without ``--judge-model``), ready to use: it defaults to the
    generation provider and, for the same provider, its server."""
    if not settings.judge_model:
        return None
    from datakeg.providers import create_provider

    gen = generation_provider
    name = settings.judge_provider or gen.name
    base_url = settings.judge_base_url
    if base_url is None and name == gen.name:
        base_url = getattr(gen, "base_url", None) or getattr(gen, "host", None)
    provider = create_provider(name, model=settings.judge_model, base_url=base_url,
                               timeout=settings.request_timeout, structured=settings.structured,
                               max_retries=settings.max_retries)
    provider.on_notice = callbacks.on_warning
    provider.wait_ready(settings.wait_for_model, callbacks.on_message)
    provider.prepare(lambda message: callbacks.on_message(f"judge {provider.name}: {message}"))
    return provider
