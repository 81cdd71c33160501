"""Exceptions raised by the core. Each message says what went wrong *and* what to do about it."""


class DatakegError(Exception):
    """Base class. ``hint`` is the actionable part shown to the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        from datakeg.support.secrets import (
            scrub,  # no exception ever carries a key (a server may echo one)
        )

        message = scrub(message)
        hint = scrub(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class ConfigError(DatakegError):
    """Bad settings (ratios, thresholds, paths). Exit code 2 like click's usage errors."""

    exit_code = 2


class ProviderUnavailable(DatakegError):
    """The provider cannot be used at all (server down, model missing, key missing)."""

    exit_code = 3


class ProviderBusy(ProviderUnavailable):
    """The server accepted the connection but did not answer the start check in time: it is busy
    (llama.cpp's server answers GET /models only between completions), not down. Retried within
    --wait-for-model."""


class ProviderRequestError(DatakegError):
    """One request failed (after the client's own retries). ``connection``: nothing answered (the
    server is down or gone), as opposed to an answer that was an error; the run's circuit breaker
    counts these."""

    connection = False


class ContextTooSmall(ConfigError):
    """A prompt does not fit the server's context window, whatever the reply's size: no request of
    this run can succeed until the chunks are smaller or the server's context larger."""


class ServerGone(DatakegError):
    """The model server stopped answering during the run (connection refused again and again, and
    the start check fails too). Exit code 4 like a run whose requests failed: rerun to continue."""

    exit_code = 4


class BudgetExhausted(DatakegError):
    """A --max-requests / --max-tokens / --max-cost limit was reached (everything so far is saved)."""

    exit_code = 5


class OutputBusy(DatakegError):
    """Another datakeg process is writing to the same output folder."""

    exit_code = 2
