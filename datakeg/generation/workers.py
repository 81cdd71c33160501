"""A thread pool that runs the most urgent work first.

``ThreadPoolExecutor`` runs tasks in the order they were submitted, so the chunks of a big
document (the run's critical path) wait behind every small document's. Here each task carries a
priority (lower runs first, ties in submission order): the pipeline gives a document's chunks a
priority from how much work the document has left, so the longest chain starts first and small
documents fill the gaps.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future

_local = threading.local()


def current_priority() -> float:
    """The priority of the pool task this thread is running (0.0 outside a pool): the model call
    slots go to the most urgent waiting request first (see :class:`datakeg.generation.calls.Caller`)."""
    return getattr(_local, "priority", 0.0)


class PriorityPool:
    def __init__(self, workers: int, name: str = "datakeg-worker"):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{k}", daemon=True)
                         for k in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args, priority: float = 0.0, **kwargs) -> Future:
        fut: Future = Future()
        self._queue.put((priority, next(self._seq), fn, args, kwargs, fut))
        return fut

    def _work(self) -> None:
        while True:
            priority, _, fn, args, kwargs, fut = self._queue.get()
            if fn is None:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            _local.priority = priority
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                fut.set_exception(exc)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds in all) for the workers to end after ``shutdown``."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item[2] is not None:
                    item[5].cancel()
        for _ in self._threads:
            self._queue.put((float("inf"), next(self._seq), None, (), {}, None))
        if wait:
            for t in self._threads:
                t.join()
