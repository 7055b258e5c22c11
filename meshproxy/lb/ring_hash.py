"""Ring hash (ketama): the same key goes to the same host, and a host leaving moves only its own keys."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from random import Random

from meshproxy.lb._base import DEFAULT_PANIC_THRESHOLD, Balancer
from meshproxy.lb._hash import hash64
from meshproxy.lb._host import H

DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_POINTS_PER_WEIGHT = 160


class RingHashBalancer(Balancer[H]):
    """Consistent hashing on a ring of host points (ketama).

    Each host gets ``weight * points_per_weight`` points ``hash64(b"<name>_<i>")``; a key belongs to the first
    point at or after its hash. More points mean an evener spread at the cost of memory and rebuild time.
    A host's point count depends only on its own weight, so when a host leaves only its keys move. We do
    not size the ring as Envoy does (lightest host's share of ``min_ring_size``): that rule re-scales
    every host when the host count changes, and removing 1 of 10 hosts then moved 17 % of keys, not 10 %.
    Only when the ring would be smaller than ``min_ring_size`` or larger than ``max_ring_size`` is it
    scaled to that bound, and then hosts' counts do depend on the total weight.
    Picks without a key hash a random number, i.e. are random.
    Which bytes make the key (Mongo collection, a gRPC header, a DynamoDB partition key) is the caller's
    choice per protocol; the balancer only hashes them.
    """

    uses_key = True

    def __init__(
        self,
        hosts: Sequence[H] = (),
        *,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        min_ring_size: int = DEFAULT_MIN_RING_SIZE,
        max_ring_size: int = DEFAULT_MAX_RING_SIZE,
        points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT,
        rng: Random | None = None,
    ) -> None:
        if not 1 <= min_ring_size <= max_ring_size:
            raise ValueError(f"need 1 <= min_ring_size <= max_ring_size, got {min_ring_size}, {max_ring_size}")
        if points_per_weight < 1:
            raise ValueError(f"points_per_weight must be at least 1, got {points_per_weight}")
        self.points_per_weight = points_per_weight
        self.min_ring_size = min_ring_size
        self.max_ring_size = max_ring_size
        self._rng = rng if rng is not None else Random()
        self._points: list[int] = []
        self._owners: list[H] = []
        super().__init__(hosts, panic_threshold=panic_threshold)

    @property
    def ring_size(self) -> int:
        return len(self._points)

    def _rebuild(self, hosts: list[H]) -> None:
        if not hosts:
            self._points, self._owners = [], []
            return
        total = sum(host.weight for host in hosts)
        size = min(max(total * self.points_per_weight, self.min_ring_size), self.max_ring_size)
        ring: list[tuple[int, int]] = []
        placed = 0
        cumulative = 0
        for index, host in enumerate(hosts):
            cumulative += host.weight
            # Rounding the running total (not each host) makes the counts add up to exactly ``size``.
            count = round(cumulative * size / total) - placed
            placed += count
            ring.extend((hash64(f"{host.name}_{replica}".encode()), index) for replica in range(count))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [hosts[index] for _, index in ring]

    def pick(self, key: bytes | None = None) -> H | None:
        if not self._points:
            return None
        point = self._rng.getrandbits(64) if key is None else hash64(key)
        index = bisect.bisect_left(self._points, point)
        return self._owners[index if index < len(self._owners) else 0]
