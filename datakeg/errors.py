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


class ProviderRequestError(DatakegError):
    """One request failed (after the client's own retries)."""


class BudgetExhausted(DatakegError):
    """A --max-requests / --max-tokens / --max-cost limit was reached (everything so far is saved)."""

    exit_code = 5


class OutputBusy(DatakegError):
    """Another datakeg process is writing to the same output folder."""

    exit_code = 2
