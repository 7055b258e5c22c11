"""Every balancer spreads 100k picks within a stated tolerance of the hosts' weights."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.lb import RingHashBalancer, RoundRobinBalancer

from .hosts import BALANCERS, hosts_weighted, shares

PICKS = 100_000

TOLERANCE = {
    "round_robin": 0.001,  # deterministic EDF: exact up to the last partial cycle
    "least_request": 0.001,  # idle hosts, unequal weights: EDF on the plain weights
    "random": 0.01,  # sampling error at 100k picks is ~0.15 %, so 1 % is > 6 sigma
    "maglev": 0.01,  # the 65537-slot table is filled in exact weight proportion
    "ring_hash": 0.02,  # 160 points a unit of weight (1600 here): arcs vary by about 1 %
}


@pytest.mark.parametrize("policy", sorted(BALANCERS))
def test_shares_over_100k_picks_are_within_the_stated_absolute_tolerance_of_weights_1_2_3_4(policy: str) -> None:
    hosts = hosts_weighted(1, 2, 3, 4)
    measured = shares(BALANCERS[policy](hosts), PICKS)
    for host in hosts:
        assert measured[host.name] == pytest.approx(host.weight / 10, abs=TOLERANCE[policy])


def test_a_larger_ring_spreads_keys_within_1_percent_of_weights() -> None:
    hosts = hosts_weighted(1, 2, 3, 4)
    measured = shares(RingHashBalancer(hosts, min_ring_size=65536), PICKS)
    for host in hosts:
        assert measured[host.name] == pytest.approx(host.weight / 10, abs=0.01)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_round_robin_gives_every_host_exactly_its_weight_in_each_cycle_of_total_weight_picks(
    weights: list[int],
) -> None:
    hosts = hosts_weighted(*weights)
    balancer = RoundRobinBalancer(hosts)
    for _cycle in range(3):
        picked = [balancer.pick() for _ in range(sum(weights))]
        assert [picked.count(host) for host in hosts] == weights


def test_round_robin_interleaves_rather_than_sending_bursts() -> None:
    heavy, light = hosts_weighted(3, 1)
    balancer = RoundRobinBalancer([heavy, light])
    picked = [balancer.pick() for _ in range(8)]
    assert picked.count(light) == 2
    assert picked[:4].count(light) == 1


def test_equal_weights_rotate_in_host_order() -> None:
    hosts = hosts_weighted(1, 1, 1)
    balancer = RoundRobinBalancer(hosts)
    assert [balancer.pick() for _ in range(6)] == hosts + hosts
