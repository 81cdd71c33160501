"""Ollama through the official ``ollama`` client (honours OLLAMA_HOST)."""

from __future__ import annotations

import os
import random
import time

from datakeg.errors import ProviderRequestError, ProviderUnavailable
from datakeg.providers.base import ChatRequest, Completion, Provider, redact_url

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

    @staticmethod
    def _same_model(wanted: str, have: str) -> bool:
        if ":" not in wanted:
            wanted += ":latest"
        return have == wanted

    def list_models(self) -> list[str]:
        try:
            return [m.model for m in self.client.list().models]
        except ConnectionError as exc:
            raise ProviderUnavailable(
                f"Ollama is not reachable at {redact_url(self.host)} ({exc.__class__.__name__}).",
                f"Start it with `ollama serve` (install from https://ollama.com), or set OLLAMA_HOST "
                f"to where it runs. {OTHER_PROVIDERS}",
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
        fmt = None
        if request.schema is not None and self.structured in ("auto", "schema"):
            fmt = request.schema
        elif request.schema is not None and self.structured == "json":
            fmt = "json"
        import httpx

        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat(model=self.model, messages=request.messages, format=fmt,
                                        options=options, stream=False)
                break
            except ollama.ResponseError as exc:
                retryable = exc.status_code == 429 or exc.status_code >= 500
                error = f"Ollama error {exc.status_code}: {exc.error}"
            except (ConnectionError, httpx.TransportError) as exc:
                retryable, error = True, f"Ollama connection failed: {exc.__class__.__name__}: {exc}"
            if not retryable or attempt == self.max_retries:
                raise ProviderRequestError(error + (f" (after {attempt + 1} attempts)" if attempt else ""))
            # exponential backoff with full jitter (the Ollama client exposes no Retry-After)
            time.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** attempt)))
        return Completion(resp.message.content or "", resp.prompt_eval_count or 0, resp.eval_count or 0)

    def describe(self) -> dict:
        return {"provider": self.name, "model": self.model, "base_url": redact_url(self.host)}

    def ready_message(self) -> str:
        return f"ready: model {self.model} at {redact_url(self.host)}"
