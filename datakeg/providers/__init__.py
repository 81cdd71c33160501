"""Provider registry. ``create_provider(name, ...)`` is the only way the CLI builds one."""

from __future__ import annotations

from datakeg.errors import ConfigError
from datakeg.providers.base import ChatRequest, Completion, Provider, ProviderStatus

DESCRIPTIONS = {
    "ollama": "local Ollama server (default); OLLAMA_HOST, default model qwen2.5:3b",
    "openrouter": "OpenRouter (hosted models); key in OPENROUTER_API_KEY, --model required",
    "openai": "any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, OpenAI); --base-url, OPENAI_API_KEY",
    "local": "bundled offline model (Gemma 3 270M base, CPU) for trying datakeg without a server",
}
PROVIDERS = tuple(DESCRIPTIONS)


def provider_class(name: str) -> type[Provider]:
    if name == "ollama":
        from datakeg.providers.ollama_provider import OllamaProvider

        return OllamaProvider
    if name == "openai":
        from datakeg.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider
    if name == "openrouter":
        from datakeg.providers.openai_compat import OpenRouterProvider

        return OpenRouterProvider
    if name == "local":
        from datakeg.providers.local import LocalProvider

        return LocalProvider
    raise ConfigError(f"unknown provider {name!r}", f"Choose one of: {', '.join(PROVIDERS)}.")


def create_provider(name: str, **options) -> Provider:
    return provider_class(name)(**options)


def provider_status(name: str, **options) -> ProviderStatus:
    """Is ``name`` usable right now? Never raises for an unavailable provider."""
    from datakeg.errors import DatakegError

    try:
        provider = create_provider(name, **options)
        provider.check()
    except DatakegError as exc:
        return ProviderStatus(name, False, exc.message)
    info = provider.describe()
    where = info.get("base_url") or "in-process"
    return ProviderStatus(name, True, f"ready: model {info.get('model')} at {where}")


__all__ = ["ChatRequest", "Completion", "Provider", "ProviderStatus", "PROVIDERS", "DESCRIPTIONS",
           "create_provider", "provider_status"]
