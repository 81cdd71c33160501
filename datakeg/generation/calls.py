"""One model call: journal, budget, endpoints and accounting.

Every request goes through :meth:`Caller.call`: a request whose key is in the journal is replayed
for free; otherwise the budget is checked, an endpoint is chosen, the provider is asked, a
successful reply is journaled before it is used, and tokens and cost are counted. The journal key
does not depend on which endpoint answered.

**Endpoints.** A run may have several model servers (``--base-url`` given more than once), each
with its own concurrency. A request goes to the least busy healthy endpoint; when it fails there,
it is tried on another endpoint it has not tried yet, and an endpoint that fails twice in a row is
drained (no new requests) for a cooldown, so its work moves to the others. Only when every
endpoint failed a request does it count as failed.

A failed request (``ProviderRequestError``) is counted and reported, never journaled, so a rerun
asks again. Any other ``DatakegError`` (provider unavailable, budget exhausted) stops the run:
once one is raised, every later call raises it too.

**Truncated replies.** A reply the server cut off (``finish_reason: length``: max_tokens or the
context window ran out) is never final: it is counted and handed back with its text and reason but
not journaled, so neither this run nor a rerun treats it as an answer (the caller asks again, for
fewer pairs).

**Circuit breaker.** When ``BREAKER`` requests in a row found nothing answering at an endpoint
(connection refused or reset, after the client's retries), no more requests go there while the
start check runs again (waiting ``--wait-for-model`` seconds for the server to come back). If it
fails, the endpoint is left out; with none left the run stops at once (:class:`ServerGone`, exit
4) instead of sending every remaining request through all of its retries.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from dataclasses import dataclass, field

from datakeg.errors import (
    BudgetExhausted,
    ProviderRequestError,
    ProviderUnavailable,
    ServerGone,
)
from datakeg.generation.journal import Journal, request_key
from datakeg.generation.prompts import PROMPT_VERSION
from datakeg.generation.workers import current_priority
from datakeg.providers.base import ChatRequest, Completion, Provider

COOLDOWN = 5.0  # seconds an endpoint that keeps failing gets no new requests (doubles while it fails)
BREAKER = 3  # connection failures in a row at an endpoint before it gets no requests until it answers again


@dataclass
class Limits:
    """Hard stops for a run (None = no limit). Replayed calls from the journal cost nothing."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None


@dataclass
class RunStats:
    requests: int = 0  # calls made to the model in this run
    replayed: int = 0  # calls answered from the journal
    failed_requests: int = 0
    truncated: int = 0  # replies cut off (finish_reason: length): never journaled, asked again
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # as reported by the server (None: never reported)
    cost: float = 0.0
    max_prompt_tokens: int = 0
    max_pairs_asked: int = 0
    prompt_chars: int = 0  # characters of the prompts sent ...
    prefix_chars: int = 0  # ... of which repeat the start of an earlier prompt for the same chunk
    chain_after: int = 0  # requests that followed every document's, one after the other (paraphrases)


@dataclass
class Reply:
    text: str | None  # None: the request failed or its reply was cut off
    error: str | None = None
    replayed: bool = False
    truncated: bool = False  # the reply was cut off (finish_reason: length); its text is in ``raw``
    raw: str | None = None


@dataclass
class Endpoint:
    provider: Provider
    capacity: int
    inflight: int = 0
    requests: int = 0
    failed: int = 0
    streak: int = 0  # failures in a row
    down_until: float = 0.0
    refused: bool = False  # refused the key or went away for good: never used again in this run
    lost: int = 0  # connection failures in a row (nothing answered): the circuit breaker's count
    probing: bool = False  # the breaker tripped: no requests while the start check runs again

    def report(self) -> dict:
        info = self.provider.describe()
        return {"base_url": info.get("base_url"), "concurrency": self.capacity,
                **({"structured_output": info["structured_output"]} if "structured_output" in info else {}),
                "requests": self.requests, "failed": self.failed, **({"refused": True} if self.refused else {})}


@dataclass(order=True)
class _Waiter:
    """A request waiting for a slot: ordered by priority (lower first), then arrival."""

    priority: float
    seq: int
    tried: set = field(compare=False)
    first: bool = field(compare=False)
    granted: Endpoint | None = field(default=None, compare=False)
    error: BaseException | None = field(default=None, compare=False)
    event: threading.Event = field(default_factory=threading.Event, compare=False)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on slices: C-speed comparisons
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Caller:
    def __init__(self, provider: Provider | list[Provider], journal: Journal, limits: Limits, concurrency: int,
                 on_request, on_message=lambda message: None, wait_for_model: float = 0.0):
        providers = provider if isinstance(provider, list) else [provider]
        self.endpoints = [Endpoint(p, max(1, concurrency)) for p in providers]
        self.provider = providers[0]
        self.journal = journal
        self.limits = limits
        self.stats = RunStats()
        self.lock = threading.Lock()
        self._waiters: list[_Waiter] = []  # requests waiting for a slot, most urgent first
        self._seq = itertools.count()
        self.on_request = on_request
        self.on_message = on_message
        self.wait_for_model = wait_for_model
        self.stopped: BaseException | None = None
        self.identity = self.provider.fingerprint()
        self._prompts: dict[str, list[str]] = {}  # chunk -> prompts sent (for the prefix figures)

    @property
    def concurrency(self) -> int:
        return sum(e.capacity for e in self.endpoints)

    def stop(self, exc: BaseException) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = exc
            self._dispatch()

    def _budget_check(self) -> None:
        st, lim = self.stats, self.limits
        reason = None
        if lim.max_requests is not None and st.requests >= lim.max_requests:
            reason = f"--max-requests {lim.max_requests}"
        elif lim.max_tokens is not None and st.prompt_tokens + st.completion_tokens >= lim.max_tokens:
            reason = f"--max-tokens {lim.max_tokens}"
        elif lim.max_cost is not None and st.cost >= lim.max_cost:
            reason = f"--max-cost {lim.max_cost}"
        if reason:
            raise BudgetExhausted(
                f"stopped at {reason}: {st.requests} requests, {st.prompt_tokens + st.completion_tokens:,} tokens"
                + (f", ${st.cost:.4f}" if st.cost else "") + " used in this run.",
                "Everything finished so far is saved. Rerun the same command with a higher limit to continue; "
                "finished requests are not repeated.",
            )

    def key(self, request: ChatRequest, ordinal: int) -> str:
        return request_key(provider=self.identity.get("provider"), model=self.identity.get("model"),
                           prompt=PROMPT_VERSION, temperature=request.temperature, seed=request.seed,
                           schema=request.schema, messages=request.messages, ordinal=ordinal)

    # -- endpoints --------------------------------------------------------------------------
    def _choose(self, tried: set[int], now: float, free: dict[int, int]) -> Endpoint | None:
        """The least busy endpoint with a free slot (``free``: slots left per endpoint) that a
        request has not tried, healthy ones first; None when none has one."""
        open_ = [k for k, e in enumerate(self.endpoints)
                 if k not in tried and not e.refused and not e.probing and free[k] > 0]
        healthy = [k for k in open_ if self.endpoints[k].down_until <= now]
        all_down = all(e.down_until > now for k, e in enumerate(self.endpoints) if k not in tried)
        pool = healthy or (open_ if all_down else [])
        if not pool:
            return None
        k = min(pool, key=lambda k: ((self.endpoints[k].capacity - free[k]) / self.endpoints[k].capacity, k))
        return self.endpoints[k]

    def _dispatch(self) -> None:
        """Hand free slots to waiting requests, most urgent first (under the lock). A request that
        cannot be sent (the run stopped, every endpoint refused, the budget is spent) is woken
        with the reason."""
        if not self._waiters:
            return
        now = time.monotonic()
        free = {k: e.capacity - e.inflight for k, e in enumerate(self.endpoints)}
        waiting = []
        for w in self._waiters:
            if self.stopped is not None:
                w.error = self.stopped
            elif all(e.refused for e in self.endpoints):
                w.error = ProviderUnavailable("every model server refused this run's requests",
                                              "See the messages above; fix the key or the servers and rerun.")
            elif all(e.refused for k, e in enumerate(self.endpoints) if k not in w.tried):
                pass  # a retry with no server left to try: it failed (woken with no slot); the run goes on
            else:
                ep = self._choose(w.tried, now, free) if any(v > 0 for v in free.values()) else None
                if ep is None:
                    waiting.append(w)
                    continue
                if w.first:
                    try:
                        self._budget_check()
                    except BudgetExhausted as exc:
                        w.error = exc
                        w.event.set()
                        continue
                    self.stats.requests += 1
                free[self.endpoints.index(ep)] -= 1
                ep.inflight += 1
                ep.requests += 1
                w.granted = ep
            w.event.set()
        self._waiters = waiting

    def _acquire(self, tried: set[int], first: bool) -> Endpoint | None:
        """A slot on the least busy endpoint with a free one that this request has not tried
        (healthy ones first). Waits for it: free slots go to the most urgent waiting request first
        (the priority of the pool task that asks, see :mod:`datakeg.generation.workers`), so more requests
        can be ready than there are slots without the critical path queueing behind the rest.
        Checks the budget and counts the request when it gets its slot."""
        w = _Waiter(current_priority(), next(self._seq), tried, first)
        with self.lock:
            if self.stopped is not None:
                raise self.stopped
            bisect.insort(self._waiters, w)
            self._dispatch()
        while not w.event.wait(0.25):  # a drained endpoint's cooldown may be over: look again
            with self.lock:
                self._dispatch()
        if w.error is not None:
            raise w.error
        return w.granted  # None: every server it has not tried yet refused the key

    def _release(self, ep: Endpoint, ok: bool) -> None:
        with self.lock:
            ep.inflight -= 1
            if ok:
                ep.streak = 0
                ep.lost = 0
                ep.down_until = 0.0
            else:
                ep.failed += 1
                ep.streak += 1
                if ep.streak >= 2 and len(self.endpoints) > 1:
                    ep.down_until = time.monotonic() + COOLDOWN * 2 ** min(ep.streak - 2, 4)
            self._dispatch()

    def _probe(self, ep: Endpoint, error: str) -> None:
        """The circuit breaker tripped for ``ep``: run the start check again (waiting for the
        server up to --wait-for-model). Back: requests flow again. Gone: the endpoint is left out,
        and with none left the run stops (ServerGone, raised here and by every later call)."""
        where = ep.provider.describe().get("base_url") or ep.provider.name
        self.on_message(f"{BREAKER} requests in a row found nothing answering at {where}; checking the server"
                        + (f" (waiting up to {self.wait_for_model:g}s)" if self.wait_for_model else ""))
        try:
            ep.provider.wait_ready(self.wait_for_model, self.on_message)
        except ProviderUnavailable as exc:
            gone = ServerGone(
                f"the model server at {where} stopped answering during the run ({error}); "
                f"its start check fails too: {exc.message}",
                "Everything finished so far is saved. Start the server again and rerun the same command to "
                "continue (--wait-for-model SECONDS waits for a server that comes back).")
            with self.lock:
                ep.probing = False
                ep.refused = True
                ep.down_until = float("inf")
                if all(e.refused for e in self.endpoints) and self.stopped is None:
                    self.stopped = gone
                self._dispatch()
            if self.stopped is gone:
                raise gone from None
            return
        with self.lock:
            ep.probing = False
            ep.lost = 0
            self._dispatch()
        self.on_message(f"the server at {where} answers again")

    # -- one call ---------------------------------------------------------------------------
    def call(self, request: ChatRequest, ordinal: int, pairs_asked: int = 0, chunk: str | None = None) -> Reply:
        key = self.key(request, ordinal)
        entry = self.journal.get(key)
        if entry is not None:
            with self.lock:
                self.stats.replayed += 1
            return Reply(entry["text"], replayed=True)
        if self.stopped is not None:  # e.g. every endpoint went away (the circuit breaker)
            raise self.stopped
        tried: set[int] = set()
        error = None
        failed = True
        while len(tried) < len(self.endpoints) and not all(
                e.refused for k, e in enumerate(self.endpoints) if k not in tried):
            ep = self._acquire(tried, first=not tried)
            if ep is None:  # the servers it has not tried refused the key meanwhile: it failed
                break
            tried.add(self.endpoints.index(ep))
            try:
                reply: Completion = ep.provider.complete(request)
            except ProviderRequestError as exc:
                with self.lock:
                    ep.lost = ep.lost + 1 if exc.connection else 0
                    trip = ep.lost >= BREAKER and not ep.probing and not ep.refused
                    if trip:
                        ep.probing = True  # no new requests there until the check below is done
                self._release(ep, ok=False)
                error = exc.message if len(self.endpoints) == 1 else \
                    f"{exc.message} (at {ep.provider.describe().get('base_url')})"
                if trip:
                    self._probe(ep, error)
                continue
            except ProviderUnavailable as exc:
                # one server of several refusing the key (or gone for good) is drained for the rest of
                # the run; only when none is left does the run stop
                with self.lock:
                    ep.inflight -= 1
                    ep.failed += 1
                    ep.down_until = float("inf")
                    ep.refused = True
                    left = [e for e in self.endpoints if not e.refused]
                    if not left and self.stopped is None:
                        self.stopped = exc  # before any waiting request is woken: they all stop with it
                    self._dispatch()
                if not left:
                    raise
                error = exc.message
                continue
            except BaseException as exc:
                self._release(ep, ok=False)
                self.stop(exc)
                raise
            # the tokens count before the slot is handed on, so the next request's budget check sees them
            with self.lock:
                st = self.stats
                st.prompt_tokens += reply.prompt_tokens
                st.completion_tokens += reply.completion_tokens
                st.cost += reply.cost or 0.0
            self._release(ep, ok=True)
            failed = False
            break
        if failed:
            with self.lock:
                self.stats.failed_requests += 1
            return Reply(None, error=error)
        if reply.finish_reason == "length":  # cut off: never final, never journaled
            with self.lock:
                self.stats.truncated += 1
            self.on_request(reply.prompt_tokens, reply.completion_tokens)
            return Reply(None, error=f"the reply was cut off after {reply.completion_tokens or '?'} tokens "
                                     "(finish_reason: length: max_tokens or the server's context ran out)",
                         truncated=True, raw=reply.text)
        self.journal.put(key, text=reply.text, prompt_tokens=reply.prompt_tokens,
                         completion_tokens=reply.completion_tokens, cost=reply.cost)
        prompt = "\n".join(str(m.get("content", "")) for m in request.messages)
        with self.lock:
            st = self.stats
            st.max_pairs_asked = max(st.max_pairs_asked, pairs_asked)
            st.max_prompt_tokens = max(st.max_prompt_tokens, reply.prompt_tokens)
            if reply.cached_tokens is not None:
                st.cached_tokens = (st.cached_tokens or 0) + reply.cached_tokens
            if chunk is not None:
                # compared with the chunk's first and latest prompts only (memory stays flat on big runs;
                # the first shares system prompt, document and excerpt with every later one)
                earlier = self._prompts.get(chunk)
                st.prompt_chars += len(prompt)
                if earlier:
                    st.prefix_chars += max(_common_prefix(prompt, p) for p in earlier)
                    self._prompts[chunk] = [earlier[0], prompt]
                else:
                    self._prompts[chunk] = [prompt]
        self.on_request(reply.prompt_tokens, reply.completion_tokens)
        return Reply(reply.text)
