"""Slow start: a host that just joined gets a fraction of its weight, growing to all of it over a window.

A freshly started upstream often has cold caches, JIT or connection pools; giving it its full share at once
makes its first seconds the slowest of the cluster. As in Envoy, the weight factor is
``max(min_weight_fraction, (time_in_window / window) ** (1 / aggression))``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from meshproxy.lb._host import BalancedHost

DEFAULT_AGGRESSION = 1.0
DEFAULT_MIN_WEIGHT_FRACTION = 0.1


@dataclass
class SlowStart:
    """Remembers when each host joined and says how much of its weight it may use now.

    Hosts present at the first ``observe`` are not ramped (the cluster is starting, all hosts are equal);
    a host that joins later, or comes back after leaving the routable set (removed, or unhealthy while the
    set is not in panic), ramps from then. ``clock`` is injected so tests never read the wall clock.
    """

    window: float
    """Seconds a new host takes to reach its full weight."""
    clock: Callable[[], float] = time.monotonic
    aggression: float = DEFAULT_AGGRESSION
    """1 ramps linearly; above 1 gives more traffic early, below 1 less."""
    min_weight_fraction: float = DEFAULT_MIN_WEIGHT_FRACTION
    _joined_at: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)
    ramping_until: float = field(default=-math.inf, init=False)
    """Clock time after which no host is ramping, so balancers can go back to static weights."""

    def __post_init__(self) -> None:
        if self.window <= 0 or self.aggression <= 0 or not 0 < self.min_weight_fraction <= 1:
            raise ValueError("slow start needs window > 0, aggression > 0 and 0 < min_weight_fraction <= 1")

    def observe(self, names: Iterable[str]) -> None:
        """Record the current host set; names not seen in the previous set join now."""
        now = self.clock()
        joined = now if self._started else -math.inf
        self._joined_at = {name: self._joined_at.get(name, joined) for name in names}
        self._started = True
        self.ramping_until = max(self._joined_at.values(), default=-math.inf) + self.window

    def factor(self, name: str, now: float) -> float:
        """The fraction of its weight host ``name`` gets at clock time ``now``."""
        elapsed = now - self._joined_at.get(name, -math.inf)
        if elapsed >= self.window:
            return 1.0
        return max(self.min_weight_fraction, math.pow(max(elapsed, 0.0) / self.window, 1.0 / self.aggression))


def ramped_weights(
    hosts: Sequence[BalancedHost], weights: Sequence[float], slow_start: SlowStart | None
) -> Callable[[int], float]:
    """``weight_of(index)`` for an EDF scheduler: ``weights`` as given, scaled down for hosts still ramping.

    Records the host set with ``slow_start`` first. Without slow start, or once every host has finished
    ramping, it returns the plain weights and reads no clock.
    """
    if slow_start is None:
        return weights.__getitem__
    slow_start.observe(host.name for host in hosts)
    names = [host.name for host in hosts]

    def weight_of(index: int) -> float:
        now = slow_start.clock()
        if now >= slow_start.ramping_until:
            return weights[index]
        return weights[index] * slow_start.factor(names[index], now)

    return weight_of
