"""OpenAI-compatible servers (OpenAI, vLLM, llama.cpp server, LM Studio) and OpenRouter,
through the official ``openai`` client."""

from __future__ import annotations

import os

from datakeg.errors import ProviderRequestError, ProviderUnavailable
from datakeg.providers.base import ChatRequest, Completion, Provider, redact_url

OPENROUTER_URL = "https://openrouter.ai/api/v1"


class OpenAICompatProvider(Provider):
    name = "openai"
    description = ("any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, OpenAI); --base-url, key in "
                   "OPENAI_API_KEY (optional for local servers), default model: the server's")
    key_env = "OPENAI_API_KEY"
    default_concurrency = 4

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout: float = 300.0,
                 structured: str = "auto", max_retries: int = 2, **_):
        super().__init__(model)
        import openai

        self.base_url = base_url or self.default_base_url()
        self.api_key = os.environ.get(self.key_env) or None
        self.structured = structured
        # "auto" starts with a JSON schema and steps down when the server rejects it.
        self._mode = {"auto": "schema", "schema": "schema", "json": "json", "none": "none"}[structured]
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "not-needed",  # local servers accept any key
            timeout=timeout,
            max_retries=max_retries,
        )

    def default_base_url(self) -> str | None:
        return os.environ.get("OPENAI_BASE_URL")

    def _unreachable(self, exc) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"The OpenAI-compatible server at {redact_url(str(self.client.base_url))} is not reachable "
            f"({exc.__class__.__name__}).",
            "Start the server (vLLM: `vllm serve MODEL`; llama.cpp: `llama-server -m FILE`; LM Studio: "
            "start its local server) or correct --base-url. Try `datakeg providers` to see what is reachable.",
        )

    def check(self) -> None:
        import openai

        if self.base_url is None and not self.api_key:
            raise ProviderUnavailable(
                "--provider openai needs --base-url for a local server, or OPENAI_API_KEY for api.openai.com.",
                "Example: datakeg generate docs out --provider openai --base-url http://localhost:8000/v1",
            )
        try:
            models = [m.id for m in self.client.with_options(max_retries=0, timeout=15).models.list()]
        except openai.APIConnectionError as exc:
            raise self._unreachable(exc) from None
        except openai.AuthenticationError:
            raise ProviderUnavailable(
                f"The server rejected the API key from {self.key_env}.",
                f"Check {self.key_env} (export {self.key_env}=...).",
            ) from None
        except openai.APIStatusError:
            models = []  # some servers have no /models endpoint; the first request will tell
        if self.model is None:
            if len(models) == 1 or (models and self.base_url):
                self.model = models[0]
            else:
                raise ProviderUnavailable(
                    "No model given and the server does not name a single one.",
                    "Pass --model NAME." + (f" The server offers: {', '.join(models[:10])}" if models else ""),
                )

    def _response_format(self, request: ChatRequest) -> dict | None:
        if request.schema is None or self._mode == "none":
            return None
        if self._mode == "schema":
            return {"type": "json_schema", "json_schema": {"name": "qa_pairs", "schema": request.schema, "strict": True}}
        return {"type": "json_object"}

    def complete(self, request: ChatRequest) -> Completion:
        import openai

        while True:
            kwargs = {"model": self.model, "messages": request.messages, "temperature": request.temperature}
            if request.max_tokens:
                kwargs["max_tokens"] = request.max_tokens
            if request.seed is not None:
                kwargs["seed"] = request.seed
            fmt = self._response_format(request)
            if fmt:
                kwargs["response_format"] = fmt
            if self.name == "openrouter":
                kwargs["extra_body"] = {"usage": {"include": True}}  # report the cost (for --max-cost)
            try:
                resp = self.client.chat.completions.create(**kwargs)
                break
            except openai.BadRequestError as exc:
                # The server does not support this structured-output mode: step down and remember.
                message = str(exc).lower()
                if fmt is not None and self.structured == "auto" and any(
                    word in message for word in ("response_format", "schema", "json")
                ):
                    self._mode = "json" if self._mode == "schema" else "none"
                    continue
                raise ProviderRequestError(f"request rejected: {exc.message}") from None
            except openai.APIConnectionError as exc:
                raise ProviderRequestError(f"connection failed: {exc}") from None
            except openai.APIStatusError as exc:
                raise ProviderRequestError(f"HTTP {exc.status_code}: {exc.message}") from None
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content if choice and choice.message else "") or ""
        usage = resp.usage
        cost = getattr(usage, "cost", None) if usage else None
        return Completion(
            text,
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
            float(cost) if isinstance(cost, (int, float)) else None,
        )

    def describe(self) -> dict:
        return {
            "provider": self.name,
            "model": self.model,
            "base_url": redact_url(str(self.client.base_url)),
            "structured_output": self._mode,
        }

    def fingerprint(self) -> dict:
        return {"provider": self.name, "model": self.model, "structured_output": self.structured}

    def ready_message(self) -> str:
        return f"ready: model {self.model} at {redact_url(str(self.client.base_url))}"


class OpenRouterProvider(OpenAICompatProvider):
    name = "openrouter"
    description = "OpenRouter (hosted models); key in OPENROUTER_API_KEY, --model required"
    key_env = "OPENROUTER_API_KEY"

    def default_base_url(self) -> str:
        return OPENROUTER_URL

    def check(self) -> None:
        if not self.api_key:
            raise ProviderUnavailable(
                "OPENROUTER_API_KEY is not set.",
                "Create a key at https://openrouter.ai/keys and run `export OPENROUTER_API_KEY=...`.",
            )
        if not self.model:
            raise ProviderUnavailable(
                "--provider openrouter needs --model.",
                "Example: --model qwen/qwen-2.5-7b-instruct (see https://openrouter.ai/models).",
            )
        super().check()
