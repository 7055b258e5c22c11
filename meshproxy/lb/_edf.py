"""Earliest-deadline-first scheduling: weighted turns in O(log n) a pick.

Each entry waits ``1 / weight`` between turns; the entry with the earliest deadline goes next. Over any
window every entry gets turns in proportion to its weight, interleaved rather than in bursts, which is why
Envoy uses it for weighted round robin. Ties go to the entry queued first, so equal weights give plain
round robin in host order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class EdfScheduler:
    """Picks indices ``0..n-1`` in weighted turns; ``weight_of(i)`` is asked each time ``i`` is requeued."""

    def __init__(self, count: int, weight_of: Callable[[int], float]) -> None:
        self._weight_of = weight_of
        self._queued = 0
        self._heap: list[tuple[float, int, int]] = []
        for index in range(count):
            self._push(0.0, index)

    def _push(self, now: float, index: int) -> None:
        heapq.heappush(self._heap, (now + 1.0 / self._weight_of(index), self._queued, index))
        self._queued += 1

    def next(self) -> int | None:
        """The index whose turn it is, requeued at its current weight; None when empty."""
        if not self._heap:
            return None
        deadline, _, index = self._heap[0]
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._weight_of(index), self._queued, index))
        self._queued += 1
        return index
