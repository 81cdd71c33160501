"""The provider seam: one request in, one text reply out, plus token usage.

A provider knows how to reach one kind of model server (or run a model in-process). The pipeline
only sees :class:`Provider`; adding a provider means subclassing it and registering it (entry
point group ``datakeg.providers``, or ``datakeg.providers.register_provider``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # annotations only (the errors module is imported where they are raised)
    from datakeg.errors import ProviderRequestError, ProviderUnavailable


MAX_REPLY_CHARS = 1_000_000  # a reply longer than this is refused (no QA batch is anywhere near it)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    schema: dict | None = None  # JSON schema for structured output, when wanted
    temperature: float = 0.7
    max_tokens: int | None = None
    seed: int | None = None
    # The same request as data (excerpt, count, split, language, avoid, reasoning), for providers
    # that cannot follow instructions and build their own prompt (the offline base model).
    task: dict | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # in USD, when the server reports it (OpenRouter)
    cached_tokens: int | None = None  # prompt tokens served from the server's prefix cache, when reported
    # why the model stopped: "stop", or "length" when the reply was cut at max_tokens or at the
    # server's context (such a reply is never final: see datakeg.generation.calls)
    finish_reason: str | None = None


@dataclass
class ProviderStatus:
    name: str
    ok: bool
    detail: str


class Provider:
    """Base class. Subclasses set the metadata below and implement ``check`` and ``complete``.

    Constructors accept keyword options ``model``, ``base_url``, ``timeout``, ``structured`` and
    ``max_retries`` (ignoring the ones they do not use, via ``**_``).
    """

    name = "base"
    description = ""
    default_model: str | None = None  # None: the provider decides (e.g. the server's only model)
    key_env: str | None = None  # environment variable holding the API key, if any
    default_concurrency = 4
    max_reply_chars = MAX_REPLY_CHARS  # longer replies are a failed request, never journaled

    def __init__(self, model: str | None):
        self.model = model
        self.on_notice = None  # callable(message): what the provider learns once per run (set by the caller)
        self._noticed: set[str] = set()

    def notice(self, message: str) -> None:
        """Tell the user something once per run (a structured-output mode the server refused, a
        --model the server does not list). Never printed here: the run's callbacks show it."""
        if message in self._noticed:
            return
        self._noticed.add(message)
        if self.on_notice is not None:
            self.on_notice(message)

    def check(self) -> None:
        """Raise ProviderUnavailable (with what to run) unless requests can be served."""

    def wait_ready(self, seconds: float = 0.0, on_wait=lambda message: None) -> None:
        """``check()``, retried for up to ``seconds`` while the provider is unavailable (a server
        that is still starting). Raises the last ProviderUnavailable when time is up."""
        import time

        from datakeg.errors import ProviderUnavailable

        deadline = time.monotonic() + seconds
        said = False
        while True:
            try:
                self.check()
                return
            except ProviderUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                if not said:
                    why = "busy" if exc.__class__.__name__ == "ProviderBusy" else "available"
                    on_wait(f"waiting up to {seconds:g}s for {self.name} to become {why if why == 'available' else 'free'}"
                            + (f" ({exc.message})" if why == "busy" else "") + " ...")
                    said = True
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def fingerprint(self) -> dict:
        """What identifies this provider's output in the run fingerprint (never a key, never the
        URL: the same model behind another address is the same run)."""
        return {"provider": self.name, "model": self.model}

    def ready_message(self) -> str:
        return f"ready: model {self.model}"

    def prepare(self, report=lambda message: None) -> None:
        """Load what the provider needs before the first request (in-process models)."""

    def complete(self, request: ChatRequest) -> Completion:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What goes into the manifest: never a key."""
        return {"provider": self.name, "model": self.model}

    def close(self) -> None:
        pass


def redact_url(url: str | None) -> str | None:
    """Drop user:password@ and query strings (which may hold keys) from a URL."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- shared by the HTTP providers: turn bad replies into clear, key-free errors ------------------


def request_failed(message: str, connection: bool = False) -> "ProviderRequestError":
    """A ProviderRequestError (one request failed; the pipeline retries it) with no key in it.
    ``connection``: nothing answered (refused or reset), which the run's circuit breaker counts."""
    from datakeg.errors import ProviderRequestError
    from datakeg.support.secrets import scrub

    exc = ProviderRequestError(scrub(message))
    exc.connection = connection
    return exc


def unavailable(message: str, hint: str | None = None) -> "ProviderUnavailable":
    """A ProviderUnavailable (stops the run) with no key in it."""
    from datakeg.errors import ProviderUnavailable
    from datakeg.support.secrets import scrub

    return ProviderUnavailable(scrub(message), scrub(hint) if hint else hint)


def excerpt(text: object, limit: int = 200) -> str:
    """The start of a server's text, on one line, for an error message. Scrubbed before it is cut,
    so a key cut in half cannot slip past :func:`datakeg.support.secrets.scrub`."""
    from datakeg.support.secrets import scrub

    s = " ".join(scrub(str(text)).split())
    return s if len(s) <= limit else s[:limit] + " ..."


def reply_text(text: object, max_chars: int = MAX_REPLY_CHARS, detail: str = "") -> str:
    """The reply's text, or a ProviderRequestError when there is none (null content) or it is
    oversized. Journaling either would make the failure permanent: a rerun would replay it instead
    of asking again. An empty string is the model's answer and is returned as it is."""
    if text is None:
        raise request_failed(f"the server's reply has no message content{detail}")
    if not isinstance(text, str):
        raise request_failed(f"the server's reply content is not text ({type(text).__name__}){detail}")
    if len(text) > max_chars:
        raise request_failed(f"the server's reply is {len(text):,} characters, over the {max_chars:,} limit{detail}")
    return text
