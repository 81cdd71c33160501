"""OpenAI-compatible servers (OpenAI, vLLM, llama.cpp server, LM Studio) and OpenRouter,
through the official ``openai`` client."""

from __future__ import annotations

import json
import os

from datakeg.errors import ProviderUnavailable
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

OPENROUTER_URL = "https://openrouter.ai/api/v1"


def _count(value) -> int | None:
    """A token count the server reported, or None (a bool is an int to Python, not to us)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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

    def _auth_refused(self, exc, during: str) -> ProviderUnavailable:
        """401/403: no request can succeed, so the run stops at once with how to fix the key."""
        status = getattr(exc, "status_code", None)
        where = redact_url(str(self.client.base_url))
        detail = excerpt(getattr(exc, "message", None) or exc)
        if status == 403:
            message = f"The server at {where} refused {during} (HTTP 403: {detail})."
            hint = (f"The key in {self.key_env} is not allowed to do this (model {self.model!r} not permitted, "
                    f"or no credit left): use a key that is (export {self.key_env}=...) or choose another --model.")
        else:
            message = f"The server at {where} rejected the API key (HTTP {status or 401}: {detail})."
            hint = (f"Check the key in {self.key_env} (export {self.key_env}=<a valid key>)." if self.api_key else
                    f"{self.key_env} is not set and the server wants a key: export {self.key_env}=<your key>.")
        if self.name == "openrouter":
            hint += " Keys: https://openrouter.ai/keys"
        return unavailable(message, hint)

    def check(self) -> None:
        import openai

        if self.base_url is None and not self.api_key:
            raise ProviderUnavailable(
                "--provider openai needs --base-url for a local server, or OPENAI_API_KEY for api.openai.com.",
                "Example: datakeg generate docs out --provider openai --base-url http://localhost:8000/v1",
            )
        try:
            page = self.client.with_options(max_retries=0, timeout=15).models.list()
            models = [m.id for m in page] if not isinstance(page, str) else None
        except openai.APIConnectionError as exc:
            raise self._unreachable(exc) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise self._auth_refused(exc, "to list its models") from None
        except openai.APIStatusError:
            models = []  # some servers have no /models endpoint; the first request will tell
        except (openai.APIError, ValueError, TypeError, AttributeError):
            models = None  # 200 with a body that is not a model list
        if models is None or not all(isinstance(m, str) for m in models):
            raise unavailable(
                f"The server at {redact_url(str(self.client.base_url))} does not answer like an OpenAI-compatible "
                "API (GET /models did not return a JSON model list).",
                "Check --base-url: it is the API root, which usually ends in /v1 "
                "(e.g. http://localhost:8000/v1), not a web page.",
            )
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
                kwargs["usage"] = {"include": True}  # report the cost (for --max-cost)
            refused = getattr(self, "_refused", None)
            if refused is not None:  # the key was rejected: every other request would be too
                raise ProviderUnavailable(refused.message, refused.hint)  # a fresh one per thread
            try:
                # The client's documented low-level `post` sends the body as it is: the messages are
                # plain JSON already, and `chat.completions.create` would spend more CPU walking them
                # through its typed transforms than the rest of the request costs (see benchmarks).
                # The reply comes back as plain data (``cast_to=object``; the text when it is not
                # labelled JSON), read by `_completion`. Retries, timeouts and status errors stay the
                # client's.
                resp = self.client.post("/chat/completions", body=kwargs, cast_to=object)
                break
            except openai.BadRequestError as exc:
                # The server does not support this structured-output mode: step down and remember.
                # (a Content-Type echoed in the error body says nothing about structured output)
                message = str(exc).lower().replace("application/json", "")
                if fmt is not None and self.structured == "auto" and any(
                    word in message for word in ("response_format", "schema", "json")
                ):
                    self._mode = "json" if self._mode == "schema" else "none"
                    continue
                raise request_failed(f"request rejected: {excerpt(exc.message, 500)}") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                self._refused = self._auth_refused(exc, "the request")
                raise self._refused from None
            except openai.APIConnectionError as exc:
                raise request_failed(f"connection failed: {exc}") from None
            except openai.APIStatusError as exc:
                raise request_failed(f"HTTP {exc.status_code}: {excerpt(exc.message, 500)}") from None
            except openai.APIResponseValidationError as exc:
                raise request_failed(f"the server's reply is not a chat completion: {excerpt(exc.message)}") from None
            except openai.APIError as exc:
                raise request_failed(f"the request failed: {excerpt(exc.message)}") from None
            except ValueError as exc:  # json.JSONDecodeError: a 200 whose JSON body does not parse
                raise request_failed(f"the server's reply is not valid JSON ({excerpt(exc, 120)})") from None
        return self._completion(resp)

    def _completion(self, resp) -> Completion:
        """A Completion from a chat reply (its JSON as plain data), or a ProviderRequestError saying
        what is wrong with it."""
        if isinstance(resp, str):  # the client hands back the text of a reply not labelled JSON
            try:  # some proxies label a JSON reply text/plain (or not at all): read it all the same
                resp = json.loads(resp)
            except ValueError:
                kind = "an HTML page" if "<html" in resp[:2000].lower() else "not JSON"
                raise request_failed(f"the server's reply is {kind}, not a chat completion: {excerpt(resp)}") from None
        if not isinstance(resp, dict):
            raise request_failed(f"the server's reply is not a chat completion: {excerpt(resp)}")
        error = resp.get("error")
        choices = resp.get("choices")
        if error is not None:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise request_failed(f"the server answered with an error: {excerpt(message)}")
        if not isinstance(choices, list) or not choices:
            raise request_failed("the server's reply has no choices")
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        finish = choice.get("finish_reason")
        detail = f" (finish_reason: {finish})" if finish and finish != "stop" else ""
        refusal = message.get("refusal")
        if refusal:
            detail += f" (refusal: {excerpt(refusal)})"
        text = reply_text(message.get("content"), self.max_reply_chars, detail)
        usage = resp.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        details = usage.get("prompt_tokens_details")
        cost, prompt_tokens, completion_tokens = usage.get("cost"), usage.get("prompt_tokens"), usage.get("completion_tokens")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Completion(
            text,
            _count(prompt_tokens) or 0,
            _count(completion_tokens) or 0,
            float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            _count(cached),
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
