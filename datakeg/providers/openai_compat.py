"""OpenAI-compatible servers (OpenAI, vLLM, llama.cpp server, LM Studio) and OpenRouter,
through the official ``openai`` client."""

from __future__ import annotations

import json
import os
import re
import threading

from datakeg.errors import ContextTooSmall, ProviderBusy, ProviderUnavailable
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
CHECK_TIMEOUT = 15.0  # seconds for GET /models at the start check (at most --request-timeout)

# Structured-output modes, strictest first. ``auto`` starts at the first and steps down, per
# endpoint, when the server refuses the request format (see OpenAICompatProvider.complete):
#   json_schema         response_format {"type": "json_schema", ...} (OpenAI, vLLM, LM Studio, llama-server)
#   json_object+schema  response_format {"type": "json_object", "schema": ...} (llama-cpp-python's server:
#                       grammar-constrained to the schema)
#   json_object         response_format {"type": "json_object"}: any JSON object
#   none                no response_format: the prompt asks for JSON, the reply is parsed tolerantly
MODES = ("json_schema", "json_object+schema", "json_object", "none")
START_MODE = {"auto": "json_schema", "schema": "json_schema", "json": "json_object", "none": "none"}
# a refusal of the request format names it (llama-cpp-python: HTTP 500 "... 'response_format', 'type' ...
# Input should be 'text' or 'json_object'"; others 400 "response_format ... not supported")
_FORMAT_WORDS = re.compile(r"response_format|json_schema|\bformat\b", re.IGNORECASE)
# "This model's maximum context length is 512 tokens. However, you requested 695 tokens (685 in the
# messages, 10 in the completion)" (llama-cpp-python, older vLLM, OpenAI); newer vLLM: "... maximum
# context length is 4096 tokens and your request has 3500 input tokens ..."
_CONTEXT = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_PROMPT_TOKENS = re.compile(r"(\d+) (?:tokens )?in the messages|request has (\d+) input tokens|"
                            r"(\d+) (?:prompt|input) tokens", re.IGNORECASE)


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
        # "auto" starts with a JSON schema and steps down when the server refuses the format; the
        # mode is settled (kept for the run) by the first reply a server gives to a structured request
        self._mode = START_MODE[structured]
        self._settled = structured != "auto"
        self._refusals: list[str] = []  # the modes the server refused, with its words (said once)
        self._mode_lock = threading.Lock()
        self.timeout = timeout
        self.served_model: str | None = None  # the model the server says it runs, when it serves any name
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "not-needed",  # local servers accept any key
            timeout=timeout,
            max_retries=max_retries,
        )
        # while the mode is not settled, a request goes out once (no client retries): a refusal of the
        # format costs one request, not 1 + --max-retries (llama-cpp-python refuses json_schema with 500)
        self._probe_client = self.client.with_options(max_retries=0)
        # after a probe that failed for another reason (a 5xx, a dropped connection): the client's
        # retries that are left, so the server sees no more attempts than --max-retries allows
        self._rest_client = self.client.with_options(max_retries=max(0, max_retries - 1))
        self.max_retries = max_retries

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
        wait = min(CHECK_TIMEOUT, self.timeout)
        try:
            page = self.client.with_options(max_retries=0, timeout=wait).models.list()
            models = [m.id for m in page] if not isinstance(page, str) else None
            owners = {getattr(m, "owned_by", None) for m in page} if not isinstance(page, str) else set()
        except openai.APITimeoutError:
            # something listens but does not answer: busy (llama.cpp answers /models only between
            # completions), not down; --wait-for-model waits for it
            raise ProviderBusy(
                f"The server at {redact_url(str(self.client.base_url))} accepted the connection but did not answer "
                f"GET /models within {wait:g} s: it is busy (e.g. with another client's request), not down.",
                "Wait for it: rerun with --wait-for-model SECONDS (e.g. --wait-for-model 600).",
            ) from None
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
        elif models and not self._listed(self.model, models) and self.model != "-":  # "-": `datakeg providers`
            where = redact_url(str(self.client.base_url))
            # llama.cpp's servers run one model and answer to any name (llama-cpp-python lists it as
            # owned_by "me", llama-server as "llamacpp"): the run goes on, on the model it serves
            if len(models) == 1 and owners & {"me", "llamacpp"}:
                self.served_model = models[0]
                self.notice(f"--model {self.model!r} is not the name the server at {where} lists ({models[0]!r}); "
                            "llama.cpp serves its only model under any name, so that model answers (recorded "
                            "in the manifest as served_model)")
            else:
                raise ProviderUnavailable(
                    f"The server at {where} does not serve --model {self.model!r}.",
                    f"It lists: {', '.join(models[:10])}{' ...' if len(models) > 10 else ''}. Pass one of them "
                    "with --model (or leave --model out to use the first).",
                )

    def _listed(self, model: str, models: list[str]) -> bool:
        """Is ``model`` one the server lists? (Ollama's OpenAI API lists "name:latest" for "name";
        OpenRouter takes routing suffixes such as ":nitro" or ":floor" it does not list.)"""
        if model in models or f"{model}:latest" in models:
            return True
        return self.name == "openrouter" and model.rsplit(":", 1)[0] in {m.rsplit(":", 1)[0] for m in models}

    @staticmethod
    def _response_format(mode: str, schema: dict | None) -> dict | None:
        if schema is None or mode == "none":
            return None
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "qa_pairs", "schema": schema, "strict": True}}
        if mode == "json_object+schema":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_object"}

    @staticmethod
    def _refuses_format(exc) -> bool:
        """Does this error reply refuse the request's format (any status: llama-cpp-python says 500)?
        (a Content-Type echoed in the error body says nothing about structured output)"""
        body = f"{getattr(exc, 'message', '')} {json.dumps(getattr(exc, 'body', None), default=str)}"
        return bool(_FORMAT_WORDS.search(body.replace("application/json", "")))

    @staticmethod
    def _server_message(exc) -> str:
        body = getattr(exc, "body", None)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
        return str(getattr(exc, "message", exc))

    def _step_down(self, sent: str, exc) -> None:
        """The server refused mode ``sent``: use the next one for the rest of the run (once, whatever
        the number of requests that were refused at the same time). Said once, when a mode works."""
        with self._mode_lock:
            if self._mode != sent:
                return  # another request stepped down already
            self._mode = MODES[MODES.index(sent) + 1]
            status = getattr(exc, "status_code", None)
            self._refusals.append(f"{sent} (HTTP {status}: {excerpt(self._server_message(exc), 120)})")

    def _settle(self) -> None:
        """A reply came back in the current mode: it is this endpoint's mode for the run."""
        with self._mode_lock:
            if self._settled:
                return
            self._settled = True
            refusals = list(self._refusals)
        if refusals:
            self.notice(f"structured output at {redact_url(str(self.client.base_url))}: the server refused "
                        f"{'; '.join(refusals)}; using {self._mode} for this run")

    def _context_overflow(self, exc, max_tokens: int | None) -> int | None:
        """For a reply saying the request exceeds the context window: the max_tokens that fits
        (None when this is no such reply). Raises ContextTooSmall when the prompt alone does not fit."""
        message = self._server_message(exc)
        m = _CONTEXT.search(message)
        if not m:
            return None
        n_ctx = int(m.group(1))
        p = _PROMPT_TOKENS.search(message)
        prompt = int(next(g for g in p.groups() if g)) if p else None
        room = n_ctx - prompt if prompt is not None else 0
        if prompt is not None and room >= 32:
            if max_tokens is None or room < max_tokens:
                return room  # the prompt fits: ask for a reply that fits too
            raise request_failed(f"the server refused a request that fits its context ({excerpt(message, 300)})")
        raise ContextTooSmall(
            f"A prompt is {prompt if prompt is not None else 'more than'} tokens but the server's context window "
            f"is {n_ctx} tokens ({redact_url(str(self.client.base_url))}): lower --chunk-size (about 4 characters "
            f"a token, plus about 350 tokens of instructions and the questions to avoid) or give the server a larger context "
            f"(llama.cpp: --n_ctx / -c; vLLM: --max-model-len).")

    def complete(self, request: ChatRequest) -> Completion:
        import openai

        max_tokens = request.max_tokens
        plain = False  # True: resend with the client's retries (a probe failed for another reason)
        while True:
            mode = self._mode if request.schema is not None else "none"
            kwargs = {"model": self.model, "messages": request.messages, "temperature": request.temperature}
            if max_tokens:
                kwargs["max_tokens"] = max_tokens
            if request.seed is not None:
                kwargs["seed"] = request.seed
            fmt = self._response_format(mode, request.schema)
            if fmt:
                kwargs["response_format"] = fmt
            if self.name == "openrouter":
                kwargs["usage"] = {"include": True}  # report the cost (for --max-cost)
            refused = getattr(self, "_refused", None)
            if refused is not None:  # the key was rejected: every other request would be too
                raise ProviderUnavailable(refused.message, refused.hint)  # a fresh one per thread
            probing = fmt is not None and not self._settled and not plain
            try:
                # The client's documented low-level `post` sends the body as it is: the messages are
                # plain JSON already, and `chat.completions.create` would spend more CPU walking them
                # through its typed transforms than the rest of the request costs (see benchmarks).
                # The reply comes back as plain data (``cast_to=object``; the text when it is not
                # labelled JSON), read by `_completion`. Retries, timeouts and status errors stay the
                # client's.
                client = self._probe_client if probing else self._rest_client if plain else self.client
                resp = client.post("/chat/completions", body=kwargs, cast_to=object)
                if request.schema is not None and not self._settled:
                    self._settle()
                break
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                self._refused = self._auth_refused(exc, "the request")
                raise self._refused from None
            except openai.APIStatusError as exc:
                if fmt is not None and self.structured == "auto" and (not self._settled or mode != self._mode) \
                        and self._refuses_format(exc):  # (a request sent in a mode already left: resent)
                    self._step_down(mode, exc)  # no retry spent, nothing journaled: the same request, another mode
                    continue
                fitted = self._context_overflow(exc, max_tokens) if exc.status_code in (400, 413, 422) else None
                if fitted is not None:
                    max_tokens = fitted
                    continue
                if probing and self.max_retries and (exc.status_code >= 500 or exc.status_code in (408, 409, 429)):
                    plain = True  # a transient error, not a refusal: the client's retries apply
                    continue
                forced = (" (structured output is set by --structured; auto steps down to what the server accepts)"
                          if fmt is not None and self.structured != "auto" and self._refuses_format(exc) else "")
                if isinstance(exc, openai.BadRequestError):
                    raise request_failed(f"request rejected: {excerpt(exc.message, 500)}{forced}") from None
                raise request_failed(f"HTTP {exc.status_code}: {excerpt(exc.message, 500)}{forced}") from None
            except openai.APIConnectionError as exc:
                if probing and self.max_retries:
                    plain = True
                    continue
                raise request_failed(f"connection failed: {exc}",
                                     connection=not isinstance(exc, openai.APITimeoutError)) from None
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
            finish if isinstance(finish, str) else None,
        )

    def describe(self) -> dict:
        return {
            "provider": self.name,
            "model": self.model,
            "base_url": redact_url(str(self.client.base_url)),
            "structured_output": self._mode,
            **({"served_model": self.served_model} if self.served_model else {}),
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
