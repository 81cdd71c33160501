"""Progress hooks for a generate run. The core never prints: it calls these."""

from __future__ import annotations


class Callbacks:
    """Override what you need; every method is a no-op by default. Methods may be called from
    worker threads (one at a time is not guaranteed), so keep them quick and thread-safe."""

    def on_message(self, message: str) -> None:
        """A line of information (loading a model, resuming, waiting for a server)."""

    def on_plan(self, plan) -> None:
        """The run's plan (documents, chunks, targets) before the first request."""

    def on_document_start(self, doc) -> None: ...
    def on_chunk_done(self, doc, chunk, accepted: int) -> None: ...

    def on_request(self, prompt_tokens: int, completion_tokens: int) -> None:
        """A model request finished (not called for replies replayed from the journal)."""

    def on_pairs(self, accepted: int) -> None:
        """``accepted`` more pairs passed the gates."""

    def on_document_done(self, doc, delivered: dict[str, int]) -> None: ...
    def on_warning(self, message: str) -> None: ...


class RecordingCallbacks:
    """Passes every call on to ``inner`` and keeps each warning (in order, once) for the manifest,
    so that ``manifest.json``'s ``warnings`` holds what the user was shown."""

    def __init__(self, inner: Callbacks | None = None):
        import threading

        self.inner = inner if inner is not None else Callbacks()
        self.warnings: list[str] = []
        self._lock = threading.Lock()

    def on_warning(self, message: str) -> None:
        with self._lock:
            if message not in self.warnings:
                self.warnings.append(message)
        self.inner.on_warning(message)

    def __getattr__(self, name):  # every other hook goes straight through
        return getattr(self.inner, name)
