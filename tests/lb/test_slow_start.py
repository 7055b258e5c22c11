"""Slow start: a host that joins later ramps from 10 % of its weight to all of it over the window.

The clock is a test double advanced by hand; nothing here reads the wall clock.
"""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest

from meshproxy.lb import LeastRequestBalancer, RoundRobinBalancer, SlowStart

from .hosts import Host


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def newcomer_share(balancer: RoundRobinBalancer[Host] | LeastRequestBalancer[Host], picks: int = 4000) -> float:
    tally = Counter(host.name if host else None for host in (balancer.pick() for _ in range(picks)))
    return tally["new"] / picks


def joined_balancer(clock: FakeClock, **slow_start: float) -> tuple[RoundRobinBalancer[Host], list[Host]]:
    hosts = [Host("a"), Host("b")]
    balancer = RoundRobinBalancer(hosts, slow_start=SlowStart(window=60.0, clock=clock, **slow_start))
    hosts.append(Host("new"))
    balancer.update(hosts)
    return balancer, hosts


def test_hosts_present_at_the_start_are_not_ramped() -> None:
    clock = FakeClock()
    balancer = RoundRobinBalancer([Host("a"), Host("new")], slow_start=SlowStart(window=60.0, clock=clock))
    assert newcomer_share(balancer) == pytest.approx(0.5, abs=0.01)


def test_a_host_that_just_joined_gets_the_10_percent_floor_of_its_weight() -> None:
    balancer, _ = joined_balancer(FakeClock())
    assert newcomer_share(balancer) == pytest.approx(0.1 / 2.1, abs=0.01)


def test_halfway_through_the_window_a_linear_ramp_gives_half_the_weight() -> None:
    clock = FakeClock()
    balancer, hosts = joined_balancer(clock)
    clock.now += 30.0
    balancer.update(hosts)  # restart the rotation so the earlier, lighter turns do not linger
    assert newcomer_share(balancer) == pytest.approx(0.5 / 2.5, abs=0.01)


def test_aggression_2_gives_more_early_the_square_root_of_the_elapsed_fraction() -> None:
    clock = FakeClock()
    balancer, hosts = joined_balancer(clock, aggression=2.0)
    clock.now += 15.0
    balancer.update(hosts)
    assert newcomer_share(balancer) == pytest.approx(0.5 / 2.5, abs=0.01)


def test_after_the_window_the_host_has_its_full_weight_without_an_update() -> None:
    clock = FakeClock()
    balancer, _ = joined_balancer(clock)
    clock.now += 60.0
    assert newcomer_share(balancer, picks=30_000) == pytest.approx(1 / 3, abs=0.01)


def test_a_host_that_leaves_and_returns_ramps_again() -> None:
    clock = FakeClock()
    balancer, hosts = joined_balancer(clock)
    clock.now += 120.0
    balancer.update(hosts[:2])
    balancer.update(hosts)
    assert newcomer_share(balancer) == pytest.approx(0.1 / 2.1, abs=0.01)


def test_least_request_ramps_a_newcomer_even_when_weights_are_equal() -> None:
    clock = FakeClock()
    hosts = [Host("a"), Host("b")]
    balancer = LeastRequestBalancer(hosts, rng=Random(3), slow_start=SlowStart(window=60.0, clock=clock))
    hosts.append(Host("new"))
    balancer.update(hosts)
    assert newcomer_share(balancer) == pytest.approx(0.1 / 2.1, abs=0.01)


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        SlowStart(window=0.0)
