"""Pick cost of every balancer for 10 and 1000 hosts: ``python -m meshproxy.lb._bench``.

Measures picks per second in one process, for the docs' figures; never run by the tests because timings
depend on the machine. Hashing balancers are given a fresh key per pick, as a proxy would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
class _BenchHost:
    name: str
    weight: int
    healthy: bool = True
    active_requests: int = 0


POLICIES: dict[str, Callable[[list[_BenchHost]], Balancer[_BenchHost]]] = {
    "round_robin": lambda hosts: RoundRobinBalancer(hosts),
    "random": lambda hosts: RandomBalancer(hosts, rng=Random(1)),
    "least_request": lambda hosts: LeastRequestBalancer(hosts, rng=Random(1)),
    "ring_hash": lambda hosts: RingHashBalancer(hosts, rng=Random(1)),
    "maglev": lambda hosts: MaglevBalancer(hosts, rng=Random(1)),
}


def picks_per_second(balancer: Balancer[_BenchHost], keys: list[bytes], seconds: float = 0.3) -> float:
    """How many ``pick(key)`` calls complete per second, cycling through ``keys``."""
    pick = balancer.pick
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for key in keys:
            pick(key)
        done += len(keys)
    return done / elapsed


def main() -> None:
    keys = [f"key-{index}".encode() for index in range(10_000)]
    for count in (10, 1000):
        for weights_name, weight_of in (("equal", lambda _: 1), ("unequal", lambda i: 1 + i % 4)):
            hosts = [_BenchHost(f"10.0.{i // 256}.{i % 256}:27017", weight_of(i)) for i in range(count)]
            for policy, make in POLICIES.items():
                built = time.perf_counter()
                balancer = make(hosts)
                build_ms = (time.perf_counter() - built) * 1000
                rate = picks_per_second(balancer, keys)
                print(f"{count:>5} hosts {weights_name:<8} {policy:<14} {rate:>11,.0f} picks/s build {build_ms:.1f} ms")


if __name__ == "__main__":
    main()
