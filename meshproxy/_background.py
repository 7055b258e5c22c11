"""An async context manager kept open on its own event loop in a daemon thread, for synchronous callers.

``ProxyThread`` (a ``Proxy``) and ``ClusterClientThread`` (a ``ClusterClient``) are this with their own
names: blocking code (pymongo, boto3, tests) gets the running object, ``call`` to run a coroutine on its loop,
and ``stop`` to leave the ``async with`` (a drain, for a proxy) and join the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")
R = TypeVar("R")


class BackgroundLoop(Generic[T]):
    """``async with open_() as value`` on a fresh event loop in a daemon thread, until ``stop``."""

    def __init__(
        self,
        open_: Callable[[], AbstractAsyncContextManager[T]],
        *,
        name: str,
        start_timeout: float = 10.0,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self._open = open_
        self._name = name
        self._start_timeout = start_timeout
        self._backend_options = backend_options or {}
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._stop: anyio.Event | None = None
        self.value: T | None = None
        """The open context's value while running."""

    def start(self) -> T:
        """Start the thread; returns the value once the context is entered (raises what prevented it)."""
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(self._start_timeout):
            raise TimeoutError(f"{self._name} did not start in time")
        if self._error is not None:
            raise self._error
        assert self.value is not None
        return self.value

    def _main(self) -> None:
        async def main() -> None:
            try:
                self._stop = anyio.Event()
                self._token = anyio.lowlevel.current_token()
                async with self._open() as value:
                    self.value = value
                    self._started.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._started.set()

        try:
            anyio.run(main, backend="asyncio", backend_options=self._backend_options)
        except BaseException as exc:
            if self._error is None:
                self._error = exc

    def call(self, fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run ``fn()`` on the thread's event loop and wait for its result."""
        return anyio.from_thread.run(fn, token=self._token)

    def run_sync(self, fn: Callable[[], R]) -> R:
        """Run ``fn()`` on the thread's event loop (for what must not race the loop) and return its result."""
        return anyio.from_thread.run_sync(fn, token=self._token)

    def stop(self) -> None:
        """Leave the context; blocks until the thread has finished. Idempotent."""
        if self._thread is None:
            return
        if self._stop is not None and self._thread.is_alive():
            anyio.from_thread.run_sync(self._stop.set, token=self._token)
        self._thread.join()
        self._thread = None
        self.value = None
