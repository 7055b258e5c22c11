"""Least request sends more to hosts with fewer requests in flight."""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest

from meshproxy.lb import LeastRequestBalancer, RoundRobinBalancer

from .hosts import Host, hosts_weighted


def tally(balancer: LeastRequestBalancer[Host], picks: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        host = balancer.pick()
        assert host is not None
        counts[host.name] += 1
    return counts


def test_with_equal_weights_two_choices_pick_the_idle_host_about_three_times_in_four() -> None:
    idle, busy = Host("idle"), Host("busy", active_requests=10)
    counts = tally(LeastRequestBalancer([idle, busy], rng=Random(1)), 10_000)
    # The busy host wins only when both samples land on it: 1/4 of picks.
    assert counts["idle"] / 10_000 == pytest.approx(0.75, abs=0.02)


def test_a_host_with_the_fewest_requests_is_never_passed_over_for_a_busier_one_it_was_compared_with() -> None:
    hosts = [Host(f"h{i}", active_requests=i) for i in range(5)]
    counts = tally(LeastRequestBalancer(hosts, rng=Random(2)), 10_000)
    ranked = [name for name, _ in counts.most_common()]
    assert ranked == ["h0", "h1", "h2", "h3", "h4"]


def test_with_unequal_weights_a_host_is_weighted_by_weight_over_active_requests_plus_one() -> None:
    light_idle = Host("light", weight=1, active_requests=0)
    heavy_busy = Host("heavy", weight=2, active_requests=5)  # effective 2 / 6 = 1/3 against 1
    counts = tally(LeastRequestBalancer([light_idle, heavy_busy]), 10_000)
    assert counts["light"] / 10_000 == pytest.approx(0.75, abs=0.01)


def test_bias_zero_ignores_active_requests_and_is_weighted_round_robin() -> None:
    hosts = hosts_weighted(1, 2, 3)
    hosts[2].active_requests = 50
    least = LeastRequestBalancer(hosts, active_request_bias=0.0)
    round_robin = RoundRobinBalancer(hosts)
    assert [least.pick() for _ in range(60)] == [round_robin.pick() for _ in range(60)]


def test_active_requests_are_read_at_pick_time_without_an_update() -> None:
    a, b = Host("a", weight=1), Host("b", weight=2)
    balancer = LeastRequestBalancer([a, b])
    b.active_requests = 1000
    counts = tally(balancer, 1000)
    assert counts["a"] > 900
