"""Polling for a state that other threads, processes or servers bring about (no fixed sleep stands in for a
state change): ``wait_for`` in plain code, ``await_until`` inside an event loop."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


def wait_for(
    condition: Callable[[], object], what: str = "the condition", *, timeout: float = 5.0, interval: float = 0.01
) -> float:
    """Poll ``condition`` until it holds; return how long that took (a figure to report, never asserted).

    Raises :class:`AssertionError` naming ``what`` when it does not hold within ``timeout`` seconds.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


async def await_until(condition: Callable[[], object], what: str = "the condition", *, timeout: float = 5.0) -> None:
    """``wait_for`` without blocking the event loop; raises :class:`TimeoutError` (naming ``what``) on timeout."""
    try:
        with anyio.fail_after(timeout):
            while not condition():  # noqa: ASYNC110 - no event to await: the state changes elsewhere
                await anyio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"not within {timeout} s: {what}") from None
