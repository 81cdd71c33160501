"""datakeg: documentation -> leak-free train/valid/test question-answer datasets.

The public API is imported lazily (``import datakeg`` loads no model or ML library)::

    import datakeg
    result = datakeg.generate("docs", "out", provider="ollama", pairs_per_1k=5)
"""

__version__ = "0.3.0"

_API = {
    "generate": "datakeg.api", "plan": "datakeg.api", "convert": "datakeg.api", "validate": "datakeg.api",
    "audit": "datakeg.api", "merge": "datakeg.api", "Result": "datakeg.api", "DryRun": "datakeg.api",
    "Validation": "datakeg.api", "Settings": "datakeg.settings", "Callbacks": "datakeg.generation.callbacks",
    "register_provider": "datakeg.providers", "errors": "datakeg.errors",
}
__all__ = sorted(_API)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'datakeg' has no attribute {name!r}")
    from importlib import import_module

    mod = import_module(module)
    return mod if name == "errors" else getattr(mod, name)


def __dir__():
    return sorted(list(globals()) + list(_API))
