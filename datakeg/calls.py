"""One model call: journal, budget and accounting.

Every request goes through :meth:`Caller.call`: a request whose key is in the journal is replayed
for free; otherwise the budget is checked, the provider is asked (at most ``concurrency`` calls in
flight), a successful reply is journaled before it is used, and tokens and cost are counted. A
failed request (``ProviderRequestError``) is counted and reported, never journaled, so a rerun asks
again. Any other ``DatakegError`` (provider unavailable, budget exhausted) stops the run: once one
is raised, every later call raises it too.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from datakeg.errors import BudgetExhausted, ProviderRequestError
from datakeg.journal import Journal, request_key
from datakeg.prompts import PROMPT_VERSION
from datakeg.providers.base import ChatRequest, Completion, Provider


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
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    max_prompt_tokens: int = 0
    max_pairs_asked: int = 0
    dropped: Counter = field(default_factory=Counter)


@dataclass
class Reply:
    text: str | None  # None: the request failed
    error: str | None = None
    replayed: bool = False


class Caller:
    def __init__(self, provider: Provider, journal: Journal, limits: Limits, concurrency: int, on_request):
        self.provider = provider
        self.journal = journal
        self.limits = limits
        self.stats = RunStats()
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(max(1, concurrency))
        self.on_request = on_request
        self.stopped: BaseException | None = None
        self.identity = provider.fingerprint()

    def stop(self, exc: BaseException) -> None:
        with self.lock:
            if self.stopped is None:
                self.stopped = exc

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

    def call(self, request: ChatRequest, ordinal: int, pairs_asked: int = 0) -> Reply:
        key = self.key(request, ordinal)
        entry = self.journal.get(key)
        if entry is not None:
            with self.lock:
                self.stats.replayed += 1
            return Reply(entry["text"], replayed=True)
        with self.slots:
            with self.lock:
                if self.stopped is not None:
                    raise self.stopped
                self._budget_check()
                self.stats.requests += 1
                self.stats.max_pairs_asked = max(self.stats.max_pairs_asked, pairs_asked)
            try:
                reply: Completion = self.provider.complete(request)
            except ProviderRequestError as exc:
                with self.lock:
                    self.stats.failed_requests += 1
                return Reply(None, error=exc.message)
            except BaseException as exc:
                self.stop(exc)
                raise
        self.journal.put(key, text=reply.text, prompt_tokens=reply.prompt_tokens,
                         completion_tokens=reply.completion_tokens, cost=reply.cost)
        with self.lock:
            self.stats.prompt_tokens += reply.prompt_tokens
            self.stats.completion_tokens += reply.completion_tokens
            self.stats.max_prompt_tokens = max(self.stats.max_prompt_tokens, reply.prompt_tokens)
            self.stats.cost += reply.cost or 0.0
        self.on_request(reply.prompt_tokens, reply.completion_tokens)
        return Reply(reply.text)
