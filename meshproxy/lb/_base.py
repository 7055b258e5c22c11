"""What all balancers share: the host set they rebuild from, and the panic threshold.

Every balancer is rebuilt by ``update(hosts)`` and then answers ``pick(key)`` from precomputed state, so
picks stay cheap and the per-change work (sorting a ring, filling a maglev table) happens once per change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic

from meshproxy.lb._host import H

DEFAULT_PANIC_THRESHOLD = 0.5


def routable_hosts(hosts: Sequence[H], panic_threshold: float) -> tuple[list[H], bool]:
    """The hosts to balance over, and whether the set is in panic.

    As in Envoy: when fewer than ``panic_threshold`` of the hosts are healthy, sending everything to the
    few healthy ones would overload them too, so we balance over all hosts and let some requests fail
    rather than collapse the survivors. A threshold of 0 disables panic mode (then an all-unhealthy set
    yields no host at all).
    """
    if not hosts:
        return [], False
    healthy = [host for host in hosts if host.healthy]
    if len(healthy) / len(hosts) < panic_threshold:
        return list(hosts), True
    return healthy, False


class Balancer(ABC, Generic[H]):
    """A load-balancing policy over a host set: ``update`` on change, ``pick`` per request."""

    uses_key = False
    """Whether ``pick`` looks at its key (ring hash, maglev): callers build a key only when it does."""

    def __init__(self, hosts: Sequence[H] = (), *, panic_threshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        if not 0.0 <= panic_threshold <= 1.0:
            raise ValueError(f"panic_threshold must be within [0, 1], got {panic_threshold}")
        self.panic_threshold = panic_threshold
        self.in_panic = False
        """True while the last ``update`` found too few healthy hosts and balances over all of them."""
        self.update(hosts)

    def update(self, hosts: Sequence[H]) -> None:
        """Rebuild from ``hosts``; call whenever hosts come or go or their weight or health changes."""
        for host in hosts:
            if host.weight < 1:
                raise ValueError(f"host {host.name!r} has weight {host.weight}; weights must be at least 1")
        routable, self.in_panic = routable_hosts(hosts, self.panic_threshold)
        self._rebuild(routable)

    @abstractmethod
    def _rebuild(self, hosts: list[H]) -> None:
        """Precompute whatever ``pick`` needs from the hosts it may return."""

    @abstractmethod
    def pick(self, key: bytes | None = None) -> H | None:
        """The host for the next request (``key`` matters only to hashing balancers); None when there is none."""
