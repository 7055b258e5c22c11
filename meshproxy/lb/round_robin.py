"""Weighted round robin: every host in turn, each as often as its weight says."""

from __future__ import annotations

from collections.abc import Sequence

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._edf import EdfScheduler
from meshproxy.lb._host import H
from meshproxy.lb.slow_start import SlowStart, ramped_weights


class RoundRobinBalancer(Balancer[H]):
    """Smooth weighted round robin (EDF): weights 1 and 3 give A B B B-like interleaving, not bursts.

    Equal weights give strict rotation in host order. The rotation restarts on every ``update``. With
    ``slow_start``, hosts that joined recently get a growing fraction of their weight.
    """

    def __init__(
        self,
        hosts: Sequence[H] = (),
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        slow_start: SlowStart | None = None,
    ) -> None:
        self._slow_start = slow_start
        self._hosts: list[H] = []
        self._scheduler = EdfScheduler(0, float)
        super().__init__(hosts, panic_threshold=panic_threshold)

    def _rebuild(self, hosts: list[H]) -> None:
        self._hosts = hosts
        weights = [float(host.weight) for host in hosts]
        self._scheduler = EdfScheduler(len(hosts), ramped_weights(hosts, weights, self._slow_start))

    def pick(self, key: bytes | None = None) -> H | None:
        index = self._scheduler.next()
        return None if index is None else self._hosts[index]
