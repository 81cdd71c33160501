"""Keep API keys out of what datakeg prints and writes.

``scrub(text)`` replaces with ``***``:

* the values of the configured keys: every environment variable named in :data:`KEY_ENV_VARS`
  (``OPENAI_API_KEY``, ``OPENROUTER_API_KEY``, ``OLLAMA_API_KEY``, ``HF_TOKEN``, plus names added with
  :func:`register_key_env`), every other ``*_API_KEY`` variable, and the values passed to
  :func:`register_secret` (keys handed over programmatically). Values shorter than
  :data:`MIN_SECRET_CHARS` are not searched for (``OPENAI_API_KEY=x`` must not blank every "x");
* what looks like a credential whatever its origin: the value of an ``Authorization`` header
  (``Bearer``/``Basic``/``Token`` schemes, in header, JSON or Python-repr form), any bare
  ``Bearer <token>`` (8 characters or more), ``api_key=...``, ``api-key: ...``, ``"api_key": "..."`` (also ``apikey``,
  ``x-api-key``, ``access_token``, ``secret``, ``password``, ``key=`` in a query string) and
  tokens shaped like provider keys (``sk-...``, ``sk_...``, ``hf_...``, ``gsk_...``) and the password
  of a URL (``https://user:***@host``).

The providers scrub every error message they raise, so exceptions carry no key; anything else
that turns server text into output (rejects, warnings, logs) should scrub it too.
"""

from __future__ import annotations

import os
import re
import threading

KEY_ENV_VARS: list[str] = ["OPENAI_API_KEY", "OPENROUTER_API_KEY", "OLLAMA_API_KEY", "HF_TOKEN"]
MIN_SECRET_CHARS = 6
MASK = "***"

_lock = threading.Lock()
_registered: set[str] = set()

# Value of an Authorization header: keep the header name and the scheme, mask the credential.
# Matches `Authorization: Bearer X`, `"authorization": "Bearer X"`, `'Authorization': 'Basic X'`.
_AUTH_HEADER = re.compile(
    r"""(?P<head>\b(?:proxy-)?authorization\b["']?\s*[:=]\s*["']?)"""
    r"""(?P<scheme>(?:bearer|basic|token|digest)\s+)?(?P<value>[^\s"',;}\]]+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=:-]{8,})", re.IGNORECASE)
# api_key=..., api-key: ..., "api_key": "...", apikey, x-api-key, access_token, secret, password
_KEY_VALUE = re.compile(
    r"""(?P<head>\b(?:x-)?(?:api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|secret|password)"""
    r"""["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;&}\]]+)""",
    re.IGNORECASE,
)
_QUERY_KEY = re.compile(r"(?P<head>[?&](?:key|token|api_key|apikey|access_token)=)(?P<value>[^\s&#\"']+)",
                        re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<value>[^/\s@]+)(?=@)", re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9])(?:sk-|sk_|hf_|gsk_|xai-)[A-Za-z0-9][A-Za-z0-9._-]{7,}")


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from now on (a key passed programmatically rather than through the env)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _registered.add(value)


def register_key_env(name: str) -> None:
    """Treat the environment variable ``name`` as holding a key (its value is scrubbed)."""
    with _lock:
        if name not in KEY_ENV_VARS:
            KEY_ENV_VARS.append(name)


def secret_values() -> list[str]:
    """Every known secret value, longest first (so a key containing another is masked whole)."""
    with _lock:
        values = set(_registered)
        names = list(KEY_ENV_VARS)
    names += [n for n in os.environ if n.upper().endswith("_API_KEY")]
    for name in names:
        value = (os.environ.get(name) or "").strip()
        if len(value) >= MIN_SECRET_CHARS:
            values.add(value)
    return sorted(values, key=len, reverse=True)


def _mask(match: re.Match) -> str:
    value = match.group("value")
    if value == MASK or set(value) <= {"*", "."}:  # already masked (or an elided "sk-...")
        return match.group(0)
    return match.group("head") + (match.groupdict().get("scheme") or "") + MASK


def scrub(text: str) -> str:
    """``text`` with every API key and credential-looking value replaced by ``***``."""
    if not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    for value in secret_values():
        text = text.replace(value, MASK)
    text = _AUTH_HEADER.sub(_mask, text)
    text = _BEARER.sub(_mask, text)
    text = _KEY_VALUE.sub(_mask, text)
    text = _QUERY_KEY.sub(_mask, text)
    text = _URL_PASSWORD.sub(_mask, text)
    return _TOKEN_LIKE.sub(MASK, text)


__all__ = ["KEY_ENV_VARS", "MASK", "register_key_env", "register_secret", "scrub", "secret_values"]
