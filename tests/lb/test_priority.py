"""Priority levels: level 0 takes the load its health allows (overprovisioning 1.4), the rest spills down."""

from __future__ import annotations

from collections import Counter
from functools import partial
from random import Random

import pytest

from meshproxy.lb import PriorityBalancer, RingHashBalancer, RoundRobinBalancer, level_health

from .hosts import Host, keys


def level(prefix: str, count: int, healthy: int) -> list[Host]:
    return [Host(f"{prefix}{index}", healthy=index < healthy) for index in range(count)]


def level_shares(balancer: PriorityBalancer[Host], picks: int = 20_000) -> Counter[str]:
    """Share of picks by level prefix (the host name's first letter)."""
    tally: Counter[str] = Counter()
    for _ in range(picks):
        host = balancer.pick()
        assert host is not None
        tally[host.name[0]] += 1
    return Counter({prefix: count / picks for prefix, count in tally.items()})


def test_a_level_with_72_percent_or_more_healthy_hosts_takes_all_the_load() -> None:
    assert level_health(level("a", 100, 72), 1.4) == pytest.approx(1.0, abs=0.01)
    balancer = PriorityBalancer([level("a", 4, 3), level("b", 4, 4)], RoundRobinBalancer, rng=Random(1))
    assert balancer.loads == [1.0, 0.0]
    assert level_shares(balancer) == {"a": 1.0}


def test_half_healthy_level_0_keeps_70_percent_and_spills_30_percent_to_level_1_within_2_percent() -> None:
    balancer = PriorityBalancer([level("a", 4, 2), level("b", 4, 4)], RoundRobinBalancer, rng=Random(1))
    assert balancer.loads == pytest.approx([0.7, 0.3])
    shares = level_shares(balancer)
    assert shares["a"] == pytest.approx(0.7, abs=0.02)
    assert shares["b"] == pytest.approx(0.3, abs=0.02)


def test_unhealthy_hosts_of_a_level_not_in_panic_are_never_picked() -> None:
    hosts = level("a", 4, 2)
    balancer = PriorityBalancer([hosts, level("b", 4, 4)], RoundRobinBalancer, rng=Random(1))
    picked = {balancer.pick() for _ in range(1000)}
    assert not {host for host in hosts if not host.healthy} & picked


def test_a_dead_level_0_sends_everything_to_level_1() -> None:
    balancer = PriorityBalancer([level("a", 4, 0), level("b", 4, 4)], RoundRobinBalancer, rng=Random(1))
    assert level_shares(balancer) == {"b": 1.0}


def test_when_total_health_is_below_the_panic_threshold_load_follows_host_counts_over_all_hosts() -> None:
    levels = [level("a", 4, 1), level("b", 4, 0)]  # total health 0.35 < 0.5
    balancer = PriorityBalancer(levels, RoundRobinBalancer, rng=Random(1))
    assert balancer.in_panic
    assert balancer.loads == [0.5, 0.5]
    picked = {balancer.pick() for _ in range(1000)}
    assert picked == set(levels[0] + levels[1])


def test_no_hosts_at_any_level_yields_none() -> None:
    assert PriorityBalancer([[], []], RoundRobinBalancer).pick() is None
    assert PriorityBalancer([], RoundRobinBalancer).pick() is None


def test_a_key_keeps_its_host_and_spreads_evenly_within_its_level() -> None:
    levels = [level("a", 4, 2), level("b", 4, 4)]
    balancer = PriorityBalancer(levels, partial(RingHashBalancer, points_per_weight=1024))
    for key in keys(100):
        assert balancer.pick(key) is balancer.pick(key)
    tally = Counter(balancer.pick(key) for key in keys(20_000))
    # Level 0 has two healthy hosts and 70 % of the keys: about 35 % each, not skewed by the level choice.
    assert tally[levels[0][0]] / 20_000 == pytest.approx(0.35, abs=0.03)
    assert tally[levels[0][1]] / 20_000 == pytest.approx(0.35, abs=0.03)
