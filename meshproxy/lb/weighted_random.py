"""Weighted random: each pick independent, host chosen with probability weight / total weight."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from random import Random

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._host import H


class RandomBalancer(Balancer[H]):
    """Weighted random choice; pass a seeded ``rng`` for reproducible picks in tests and replays.

    Keeps no state between picks, so it suits many proxies in front of the same hosts with no coordination.
    """

    def __init__(
        self,
        hosts: Sequence[H] = (),
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: Random | None = None,
    ) -> None:
        self._rng = rng if rng is not None else Random()
        self._hosts: list[H] = []
        self._cumulative: list[int] = []
        super().__init__(hosts, panic_threshold=panic_threshold)

    def _rebuild(self, hosts: list[H]) -> None:
        self._hosts = hosts
        self._cumulative = list(itertools.accumulate(host.weight for host in hosts))

    def pick(self, key: bytes | None = None) -> H | None:
        if not self._hosts:
            return None
        point = self._rng.random() * self._cumulative[-1]
        return self._hosts[bisect.bisect_right(self._cumulative, point)]
