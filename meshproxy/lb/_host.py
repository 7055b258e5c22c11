"""What a balancer reads from a host, and nothing more.

``lb/`` knows nothing of ours but the host type, so the host type is a structural protocol: the cluster's
``Host``, a test double or a user's own object all qualify by having these four attributes. Balancers
never write to a host; the cluster owns health and request counts and calls ``update()`` when they change.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class BalancedHost(Protocol):
    """The read-only view of an upstream host that every balancer works from."""

    @property
    def name(self) -> str:
        """Stable identity; ring hash and maglev place a host by it, so it must not change with restarts."""
        ...

    @property
    def weight(self) -> int:
        """Relative share of traffic, at least 1 (Envoy's load_balancing_weight)."""
        ...

    @property
    def healthy(self) -> bool: ...

    @property
    def active_requests(self) -> int:
        """Requests in flight to this host; only the least-request balancer reads it, at pick time."""
        ...


H = TypeVar("H", bound=BalancedHost)
