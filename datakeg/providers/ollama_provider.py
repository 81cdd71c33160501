"""Ollama through the official ``ollama`` client (honours OLLAMA_HOST)."""

from __future__ import annotations

import os
import random
import time

from datakeg.errors import ProviderRequestError, ProviderUnavailable
from datakeg.providers.base import (
    ChatRequest,
    Completion,
    Provider,
    excerpt,
    redact_url,
    reply_text,
    request_failed,
    unavailable,
)

DEFAULT_MODEL = "qwen2.5:3b"
OTHER_PROVIDERS = (
    "Other providers: --provider local (bundled offline model), --provider openrouter "
    "(OPENROUTER_API_KEY), --provider openai --base-url URL (vLLM, llama.cpp server, LM Studio, OpenAI)."
)


class OllamaProvider(Provider):
    name = "ollama"
    description = "local Ollama server (default); OLLAMA_HOST or --base-url, default model qwen2.5:3b"
    default_model = DEFAULT_MODEL
    default_concurrency = 2

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout: float = 300.0,
                 structured: str = "auto", max_retries: int = 4, **_):
        super().__init__(model or DEFAULT_MODEL)
        import ollama

        self.host = base_url or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
        self.structured = structured
        self.max_retries = max_retries
        self.client = ollama.Client(host=self.host, timeout=timeout)
        # "auto": a JSON schema as format, stepping down to "json", then to none, when the server
        # refuses the format (Ollama before 0.5 knows only "json")
        self._mode = {"auto": "schema", "schema": "schema", "json": "json", "none": "none"}[structured]

    @staticmethod
    def _same_model(wanted: str, have: str) -> bool:
        if ":" not in wanted:
            wanted += ":latest"
        return have == wanted

    def _auth_refused(self, exc, during: str) -> ProviderUnavailable:
        """401/403 from Ollama (ollama.com, or a proxy in front of Ollama): stop, say how to fix it."""
        keyed = bool(os.environ.get("OLLAMA_API_KEY"))
        return unavailable(
            f"Ollama at {redact_url(self.host)} refused {during} (HTTP {exc.status_code}: {excerpt(exc.error)}).",
            (f"The key in OLLAMA_API_KEY may not use model {self.model!r}: use a key that may "
             "(export OLLAMA_API_KEY=...) or choose another --model." if keyed and exc.status_code == 403 else
             "Check the key in OLLAMA_API_KEY (export OLLAMA_API_KEY=<a valid key>)." if keyed else
             "The server wants a key: export OLLAMA_API_KEY=<your key> (ollama.com keys), or point OLLAMA_HOST "
             "at an Ollama that needs none.") + f" {OTHER_PROVIDERS}",
        )

    def list_models(self) -> list[str]:
        import httpx
        import ollama

        try:
            return [m.model for m in self.client.list().models]
        except (ConnectionError, httpx.TransportError) as exc:
            raise ProviderUnavailable(
                f"Ollama is not reachable at {redact_url(self.host)} ({exc.__class__.__name__}).",
                f"Start it with `ollama serve` (install from https://ollama.com), or set OLLAMA_HOST "
                f"to where it runs. {OTHER_PROVIDERS}",
            ) from None
        except ollama.ResponseError as exc:
            if exc.status_code in (401, 403):
                raise self._auth_refused(exc, "to list its models") from None
            raise unavailable(
                f"Ollama at {redact_url(self.host)} answered HTTP {exc.status_code} to GET /api/tags: "
                f"{excerpt(exc.error)}",
                f"Check that OLLAMA_HOST (or --base-url) points at an Ollama server. {OTHER_PROVIDERS}",
            ) from None
        except (ValueError, TypeError, AttributeError):  # 200 whose body is not Ollama's model list
            raise unavailable(
                f"The server at {redact_url(self.host)} does not answer like Ollama (GET /api/tags did not "
                "return its model list).",
                f"Check that OLLAMA_HOST (or --base-url) points at an Ollama server. {OTHER_PROVIDERS}",
            ) from None

    def check(self) -> None:
        models = self.list_models()
        if not any(self._same_model(self.model, m) for m in models):
            have = ", ".join(models) if models else "none"
            raise ProviderUnavailable(
                f"The Ollama model {self.model!r} is not pulled (available: {have}).",
                f"Run `ollama pull {self.model}`, or choose a pulled model with --model. {OTHER_PROVIDERS}",
            )

    def complete(self, request: ChatRequest) -> Completion:
        import ollama

        options = {"temperature": request.temperature}
        if request.max_tokens:
            options["num_predict"] = request.max_tokens
        if request.seed is not None:
            options["seed"] = request.seed
        import httpx

        attempt = 0
        while True:
            mode = self._mode if request.schema is not None else "none"
            fmt = request.schema if mode == "schema" else "json" if mode == "json" else None
            refused = getattr(self, "_refused", None)
            if refused is not None:  # the key was rejected: every other request would be too
                raise ProviderUnavailable(refused.message, refused.hint)  # a fresh one per thread
            try:
                resp = self.client.chat(model=self.model, messages=request.messages, format=fmt,
                                        options=options, stream=False)
                break
            except ollama.ResponseError as exc:
                if exc.status_code in (401, 403):
                    self._refused = self._auth_refused(exc, "the request")
                    raise self._refused from None
                if fmt is not None and self.structured == "auto" and "format" in str(exc.error).lower():
                    if self._mode == mode:  # the server refuses this format: the next one, for the run
                        self._mode = "json" if mode == "schema" else "none"
                        self.notice(f"Ollama at {redact_url(self.host)} refused format {mode} (HTTP "
                                    f"{exc.status_code}: {excerpt(exc.error, 160)}); using {self._mode} for the "
                                    "rest of the run")
                    continue
                retryable = exc.status_code == 429 or exc.status_code >= 500
                error = f"Ollama error {exc.status_code}: {excerpt(exc.error, 500)}"
                connection = False
            except (ConnectionError, httpx.TransportError) as exc:
                retryable, error = True, f"Ollama connection failed: {exc.__class__.__name__}: {exc}"
                connection = not isinstance(exc, httpx.TimeoutException)
            except (ValueError, TypeError) as exc:  # a 200 that is not a chat reply (never retried here)
                raise self._bad_reply(exc) from None
            if not retryable or attempt == self.max_retries:
                raise request_failed(error + (f" (after {attempt + 1} attempts)" if attempt else ""), connection)
            # exponential backoff with full jitter (the Ollama client exposes no Retry-After)
            time.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** attempt)))
            attempt += 1
        message = getattr(resp, "message", None)
        done = getattr(resp, "done_reason", None)
        detail = f" (done_reason: {done})" if done and done != "stop" else ""
        text = reply_text(getattr(message, "content", None) if message is not None else None,
                          self.max_reply_chars, detail)
        prompt_tokens, completion_tokens = resp.prompt_eval_count, resp.eval_count
        return Completion(text, prompt_tokens if isinstance(prompt_tokens, int) else 0,
                          completion_tokens if isinstance(completion_tokens, int) else 0,
                          finish_reason=done if isinstance(done, str) else None)

    @staticmethod
    def _bad_reply(exc: Exception) -> ProviderRequestError:
        """Why a 200 reply could not be read: not JSON, an error object, or no message."""
        import json

        if isinstance(exc, json.JSONDecodeError):
            return request_failed(f"Ollama's reply is not JSON ({exc.msg}): {excerpt(exc.doc)}")
        errors = getattr(exc, "errors", None)  # pydantic: the reply lacks a required field
        if callable(errors):
            try:
                first = errors()[0]
            except Exception:  # noqa: BLE001 - only for a better message
                first = {}
            data = first.get("input")
            if isinstance(data, dict) and data.get("error"):
                return request_failed(f"Ollama answered with an error: {excerpt(data['error'])}")
            if first.get("loc") == ("message",):
                return request_failed("Ollama's reply has no message")
        return request_failed(f"Ollama's reply is not a chat reply ({exc.__class__.__name__}: {excerpt(exc)})")

    def describe(self) -> dict:
        return {"provider": self.name, "model": self.model, "base_url": redact_url(self.host),
                "structured_output": self._mode}

    def ready_message(self) -> str:
        return f"ready: model {self.model} at {redact_url(self.host)}"
