"""Priority levels: prefer level 0, spill to the next level only as far as level 0 cannot carry the load."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from random import Random
from typing import Generic

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._hash import hash64
from meshproxy.lb._host import H

DEFAULT_OVERPROVISIONING_FACTOR = 1.4


def level_health(hosts: Sequence[H], overprovisioning_factor: float) -> float:
    """How much of the load a level can take, 0 to 1: its healthy share times the overprovisioning factor.

    With Envoy's factor 1.4, a level with 72 % or more of its hosts healthy still takes all the traffic
    (hosts are assumed to have 40 % headroom); below that, the rest spills to the next level.
    """
    if not hosts:
        return 0.0
    return min(1.0, overprovisioning_factor * sum(host.healthy for host in hosts) / len(hosts))


class PriorityBalancer(Generic[H]):
    """Balances across priority levels (``levels[0]`` preferred), each level by its own inner balancer.

    Load goes to level 0 up to its health, the rest to level 1 up to its health, and so on; if the levels'
    health sums to less than 1 the loads are scaled up to fill 100 %. If that summed health is below
    ``panic_threshold``, every level is in panic (as in Envoy's total panic): load is spread over the levels
    in proportion to their host counts, and each level balances over all its hosts, healthy or not.
    ``make`` builds a level's balancer from ``(hosts, panic_threshold=...)``, e.g. ``RoundRobinBalancer`` or
    ``functools.partial(RingHashBalancer, points_per_weight=320)``. A ``key`` chooses the level too, so a
    key keeps its host while the levels' loads are unchanged.
    """

    def __init__(
        self,
        levels: Sequence[Sequence[H]],
        make: Callable[..., Balancer[H]],
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        overprovisioning_factor: float = DEFAULT_OVERPROVISIONING_FACTOR,
        rng: Random | None = None,
    ) -> None:
        if overprovisioning_factor <= 0:
            raise ValueError(f"overprovisioning_factor must be positive, got {overprovisioning_factor}")
        self._make = make
        self.panic_threshold = panic_threshold
        self.overprovisioning_factor = overprovisioning_factor
        self._rng = rng if rng is not None else Random()
        self.loads: list[float] = []
        """The share of picks each level gets after the last ``update``."""
        self.in_panic = False
        self._balancers: list[Balancer[H]] = []
        self._cumulative: list[float] = []
        self.update(levels)

    def update(self, levels: Sequence[Sequence[H]]) -> None:
        """Rebuild every level; call on any change of hosts, weights or health at any level."""
        health = [level_health(hosts, self.overprovisioning_factor) for hosts in levels]
        total_health = min(1.0, sum(health))
        self.in_panic = total_health < self.panic_threshold
        if self.in_panic:
            host_count = sum(len(hosts) for hosts in levels)
            self.loads = [len(hosts) / host_count if host_count else 0.0 for hosts in levels]
        else:
            remaining = 1.0
            self.loads = []
            for level in health:
                load = min(remaining, level / total_health) if total_health else 0.0
                self.loads.append(load)
                remaining -= load
        # A level in panic uses all its hosts (threshold 1); otherwise only its healthy ones (threshold 0).
        inner_threshold = 1.0 if self.in_panic else 0.0
        self._balancers = [self._make(hosts, panic_threshold=inner_threshold) for hosts in levels]
        self._cumulative = list(itertools.accumulate(self.loads))

    def pick(self, key: bytes | None = None) -> H | None:
        """A host from the level the load shares choose; None when no level has a host to give."""
        if not self._cumulative or self._cumulative[-1] <= 0.0:
            return None
        # The level is chosen by a different hash than the inner balancer's: with the same one, level 0 would
        # only ever see keys from the low 70 % of the hash space and use 70 % of its ring.
        uniform = self._rng.random() if key is None else hash64(b"priority\x00" + key) / 2**64
        point = uniform * self._cumulative[-1]
        level = min(bisect.bisect_right(self._cumulative, point), len(self._balancers) - 1)
        return self._balancers[level].pick(key)
