"""Least request: send the next request where the fewest are already waiting."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from random import Random

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._edf import EdfScheduler
from meshproxy.lb._host import H
from meshproxy.lb.slow_start import SlowStart, ramped_weights

DEFAULT_ACTIVE_REQUEST_BIAS = 1.0


class LeastRequestBalancer(Balancer[H]):
    """Envoy's least request, reading ``active_requests`` at pick time.

    With equal weights it samples two hosts at random and takes the less busy one (power of two choices):
    nearly as good as scanning every host, at constant cost, and without the herd that always picking the
    single least busy host causes when many proxies share the hosts. With unequal weights it schedules by
    EDF with effective weight ``weight / (active_requests + 1) ** active_request_bias``, so a busy host is
    picked less; bias 0 turns it into weighted round robin, larger bias favours idle hosts more strongly.
    With ``slow_start``, recently joined hosts' weights are ramped too, and EDF is used while any ramps.
    """

    def __init__(
        self,
        hosts: Sequence[H] = (),
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        active_request_bias: float = DEFAULT_ACTIVE_REQUEST_BIAS,
        rng: Random | None = None,
        slow_start: SlowStart | None = None,
    ) -> None:
        if active_request_bias < 0:
            raise ValueError(f"active_request_bias must be >= 0, got {active_request_bias}")
        self._bias = active_request_bias
        self._slow_start = slow_start
        self._ramped: Callable[[int], float] = float
        self._rng = rng if rng is not None else Random()
        self._hosts: list[H] = []
        self._scheduler: EdfScheduler | None = None
        super().__init__(hosts, panic_threshold=panic_threshold)

    def _rebuild(self, hosts: list[H]) -> None:
        self._hosts = hosts
        self._ramped = ramped_weights(hosts, [float(host.weight) for host in hosts], self._slow_start)
        ramping = self._slow_start is not None and self._slow_start.clock() < self._slow_start.ramping_until
        weighted = ramping or len({host.weight for host in hosts}) > 1
        self._scheduler = EdfScheduler(len(hosts), self._effective_weight) if weighted else None

    def _effective_weight(self, index: int) -> float:
        return self._ramped(index) / math.pow(self._hosts[index].active_requests + 1, self._bias)

    def pick(self, key: bytes | None = None) -> H | None:
        hosts = self._hosts
        if not hosts:
            return None
        if self._scheduler is not None:
            index = self._scheduler.next()
            return None if index is None else hosts[index]
        count = len(hosts)
        first = hosts[int(self._rng.random() * count)]
        second = hosts[int(self._rng.random() * count)]
        return second if second.active_requests < first.active_requests else first
