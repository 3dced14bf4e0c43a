"""The model thread: one daemon thread that runs the model's work (its load, generations) in order.

`concurrent.futures`' worker threads are joined when the interpreter exits, so an editor's `exit` would wait
for a model load in progress (torch's import and the weights: seconds). This executor's thread is a daemon:
the process ends at once, whatever the model is doing.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable


class ModelThread(Executor):
    """An `Executor` with one daemon worker thread, which runs what is submitted one call at a time, in order."""

    def __init__(self, name: str = "midline-model") -> None:
        self._calls: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple, dict] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: Future = Future()
            self._calls.put((future, fn, args, kwargs))
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; `cancel_futures` cancels the waiting ones, `wait` waits for the running one."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        call = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if call is not None:
                        call[0].cancel()
            self._calls.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller gets it, as from any executor
                future.set_exception(exc)
            else:
                future.set_result(result)
