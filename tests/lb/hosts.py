"""A plain host for balancer tests: the four attributes ``BalancedHost`` asks for and nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random

from meshproxy.lb import (
    Balancer,
    LeastRequestBalancer,
    MaglevBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
)


@dataclass(eq=False)
class Host:
    """Compared by identity, as the cluster's hosts are: two hosts may share a name across rebuilds."""

    name: str
    weight: int = 1
    healthy: bool = True
    active_requests: int = 0


def hosts_weighted(*weights: int) -> list[Host]:
    return [Host(f"10.0.0.{index}:27017", weight) for index, weight in enumerate(weights)]


MakeBalancer = Callable[[Sequence[Host]], Balancer[Host]]

BALANCERS: dict[str, MakeBalancer] = {
    "round_robin": lambda hosts: RoundRobinBalancer(hosts),
    "random": lambda hosts: RandomBalancer(hosts, rng=Random(7)),
    "least_request": lambda hosts: LeastRequestBalancer(hosts, rng=Random(7)),
    "ring_hash": lambda hosts: RingHashBalancer(hosts, rng=Random(7)),
    "maglev": lambda hosts: MaglevBalancer(hosts, rng=Random(7)),
}


def keys(count: int, prefix: str = "key") -> list[bytes]:
    return [f"{prefix}-{index}".encode() for index in range(count)]


def shares(balancer: Balancer[Host], picks: int) -> dict[str, float]:
    """Each host's share of ``picks`` picks, keyed by distinct keys (ignored by non-hashing balancers)."""
    tally: Counter[str] = Counter()
    for key in keys(picks):
        host = balancer.pick(key)
        assert host is not None
        tally[host.name] += 1
    return {name: count / picks for name, count in tally.items()}
