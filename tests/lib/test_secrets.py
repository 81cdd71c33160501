"""datakeg.support.secrets.scrub: keys out of every message datakeg prints or writes."""

import pytest

from datakeg.support import secrets
from datakeg.support.secrets import MASK, register_key_env, register_secret, scrub


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.setattr(secrets, "_registered", set())
    monkeypatch.setattr(secrets, "KEY_ENV_VARS", list(secrets.KEY_ENV_VARS))
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OLLAMA_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "OPENROUTER_API_KEY", "OLLAMA_API_KEY", "GROQ_API_KEY"])
def test_values_of_key_variables_are_removed(monkeypatch, name):
    monkeypatch.setenv(name, "plainvalue-without-prefix-42")
    assert scrub("server said: bad key plainvalue-without-prefix-42 (twice: plainvalue-without-prefix-42)") == \
        f"server said: bad key {MASK} (twice: {MASK})"


def test_registered_values_and_variables(monkeypatch):
    register_secret("handed-over-in-code-77")
    assert scrub("x handed-over-in-code-77 y") == f"x {MASK} y"
    monkeypatch.setenv("MY_SERVICE_TOKEN", "token-from-custom-var-31")
    assert "token-from-custom-var-31" in scrub("token-from-custom-var-31")  # not a key variable yet
    register_key_env("MY_SERVICE_TOKEN")
    assert scrub("token-from-custom-var-31") == MASK


def test_short_values_are_not_searched_for(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "x")  # local servers accept any key
    register_secret("abc")
    assert scrub("xyz abc") == "xyz abc"


def test_a_key_containing_another_is_masked_whole(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "abcdef123456")
    register_secret("abcdef123456-extended")
    assert scrub("k=abcdef123456-extended.") == f"k={MASK}."


@pytest.mark.parametrize("text,expected", [
    ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: Bearer ***"),
    ('{"authorization": "Bearer opaque-token-1234"}', '{"authorization": "Bearer ***"}'),
    ("{'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", "{'Authorization': 'Basic ***'}"),
    ("proxy-authorization: Token abcdefgh1234", "proxy-authorization: Token ***"),
    ("sent with bearer abcdefghijklmnop", "sent with bearer ***"),
    ("url?api_key=abc123&model=x", "url?api_key=***&model=x"),
    ("api-key: qwerty-9999", "api-key: ***"),
    ('{"api_key": "zzz-secret"}', '{"api_key": "***"}'),
    ("x-api-key=abcd1234", "x-api-key=***"),
    ("GET https://example.com/v1/models?key=AIzaSyA-123", "GET https://example.com/v1/models?key=***"),
    ("Incorrect API key provided: sk-proj-AbC123dEf456", "Incorrect API key provided: ***"),
    ("openrouter key sk-or-v1-0123456789abcdef0123", "openrouter key ***"),
    ("hf_abcdefghijklmnopqrstuvwx is a token", "*** is a token"),
    ("cannot reach http://admin:hunter2@proxy:8080/v1", "cannot reach http://admin:***@proxy:8080/v1"),
])
def test_credential_shapes_are_masked(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize("text", [
    "HTTP 500: internal error",
    "This is basic information about the bearer of news.",
    "the reply has no choices (finish_reason: length)",
    "task-force and sk-8 are short words",
    "see http://127.0.0.1:11434/api/chat and a:b@c",
    "",
])
def test_ordinary_text_is_left_alone(text):
    assert scrub(text) == text


def test_scrub_is_idempotent(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    once = scrub("Authorization: Bearer sk-live-0123456789; api_key=sk-live-0123456789")
    assert "0123456789" not in once and scrub(once) == once


def test_provider_errors_carry_no_key(monkeypatch):
    """The helpers every provider raises through scrub message and hint."""
    from datakeg.providers.base import request_failed, unavailable

    monkeypatch.setenv("OPENROUTER_API_KEY", "or-key-value-5555")
    assert "or-key-value-5555" not in request_failed("HTTP 400: got or-key-value-5555").message
    exc = unavailable("bad Authorization: Bearer or-key-value-5555", "your key or-key-value-5555 ...")
    assert "or-key-value-5555" not in str(exc)


def test_a_key_cut_by_an_excerpt_is_masked_before_the_cut(monkeypatch):
    from datakeg.providers.base import excerpt

    monkeypatch.setenv("OPENAI_API_KEY", "abcdefghijklmnopqrstuvwxyz0123")
    text = "x" * 190 + " key abcdefghijklmnopqrstuvwxyz0123 and more"
    assert "abcd" not in excerpt(text, 200)
