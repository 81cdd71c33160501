"""Provider registry: the built-in providers plus any registered by other packages.

A provider class carries its own metadata (``name``, ``description``, ``default_model``,
``key_env``, ``default_concurrency``), knows how to check that it is ready (``check``) and what
identifies its output (``fingerprint``), so neither the CLI nor the pipeline has provider special
cases. Third-party providers register through the entry point group ``datakeg.providers``::

    [project.entry-points."datakeg.providers"]
    myprov = "my_package.module:MyProvider"

or at run time with :func:`register_provider`.
"""

from __future__ import annotations

from importlib import import_module

from datakeg.errors import ConfigError
from datakeg.providers.base import ChatRequest, Completion, Provider, ProviderStatus

ENTRY_POINT_GROUP = "datakeg.providers"

# name -> "module:Class"; imported on first use (the modules import their client packages lazily)
BUILTIN = {
    "ollama": "datakeg.providers.ollama_provider:OllamaProvider",
    "openrouter": "datakeg.providers.openai_compat:OpenRouterProvider",
    "openai": "datakeg.providers.openai_compat:OpenAICompatProvider",
    "local": "datakeg.providers.local:LocalProvider",
}

_registered: dict[str, type[Provider] | str] = {}
_entry_points_loaded = False


def register_provider(cls: type[Provider] | str, name: str | None = None) -> None:
    """Make a provider available by name (a class, or "module:Class" imported on first use)."""
    if name is None:
        if isinstance(cls, str):
            raise ConfigError("register_provider needs a name when given a 'module:Class' path")
        name = cls.name
    _registered[name] = cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _registered.setdefault(ep.name, ep.value)


def provider_names() -> list[str]:
    _load_entry_points()
    return list(BUILTIN) + [n for n in _registered if n not in BUILTIN]


def provider_class(name: str) -> type[Provider]:
    _load_entry_points()
    target = _registered.get(name) or BUILTIN.get(name)
    if target is None:
        raise ConfigError(f"unknown provider {name!r}", f"Choose one of: {', '.join(provider_names())}.")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = getattr(import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"provider {name!r} ({module}:{attr}) cannot be loaded: {exc}",
                              "Reinstall the package that provides it, or choose another provider.") from None
        if name in _registered:
            _registered[name] = target
    return target


def create_provider(name: str, **options) -> Provider:
    return provider_class(name)(**options)


def descriptions() -> dict[str, str]:
    """name -> one line describing the provider (for --help and `datakeg providers`)."""
    out = {}
    for name in provider_names():
        try:
            out[name] = provider_class(name).description
        except ConfigError as exc:
            out[name] = exc.message
    return out


def provider_status(name: str, **options) -> ProviderStatus:
    """Is ``name`` usable right now? Never raises for an unavailable provider."""
    from datakeg.errors import DatakegError

    try:
        provider = create_provider(name, **options)
        provider.check()
    except DatakegError as exc:
        return ProviderStatus(name, False, exc.message)
    return ProviderStatus(name, True, provider.ready_message())


__all__ = ["ChatRequest", "Completion", "Provider", "ProviderStatus", "ENTRY_POINT_GROUP", "create_provider",
           "descriptions", "provider_class", "provider_names", "provider_status", "register_provider"]
