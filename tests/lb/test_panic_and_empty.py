"""Unhealthy hosts are skipped, unless too few are healthy (the panic threshold); no host means None."""

from __future__ import annotations

import pytest

from meshproxy.lb import RoundRobinBalancer, routable_hosts

from .hosts import BALANCERS, Host, hosts_weighted

ALL = sorted(BALANCERS)


def picked_set(policy: str, hosts: list[Host]) -> set[str]:
    balancer = BALANCERS[policy](hosts)
    return {host.name for host in (balancer.pick(f"k{i}".encode()) for i in range(2000)) if host is not None}


@pytest.mark.parametrize("policy", ALL)
def test_an_empty_host_set_yields_none(policy: str) -> None:
    assert BALANCERS[policy]([]).pick(b"key") is None
    assert BALANCERS[policy]([]).pick() is None


@pytest.mark.parametrize("policy", ALL)
def test_at_or_above_the_default_50_percent_healthy_only_healthy_hosts_are_picked(policy: str) -> None:
    hosts = hosts_weighted(1, 1, 1, 1)
    hosts[0].healthy = hosts[1].healthy = False
    assert picked_set(policy, hosts) == {hosts[2].name, hosts[3].name}


@pytest.mark.parametrize("policy", ALL)
def test_below_50_percent_healthy_the_balancer_panics_and_uses_every_host(policy: str) -> None:
    hosts = hosts_weighted(1, 1, 1, 1)
    hosts[0].healthy = hosts[1].healthy = hosts[2].healthy = False
    assert picked_set(policy, hosts) == {host.name for host in hosts}
    assert BALANCERS[policy](hosts).in_panic


@pytest.mark.parametrize("policy", ALL)
def test_a_host_set_with_no_healthy_host_panics_to_all_hosts(policy: str) -> None:
    hosts = hosts_weighted(1, 1)
    for host in hosts:
        host.healthy = False
    assert picked_set(policy, hosts) == {host.name for host in hosts}


def test_a_zero_threshold_disables_panic_so_no_healthy_host_means_no_host() -> None:
    hosts = [Host("a", healthy=False)]
    assert RoundRobinBalancer(hosts, panic_threshold=0.0).pick() is None


def test_routable_hosts_reports_the_share_rule_exactly_at_the_threshold() -> None:
    hosts = hosts_weighted(1, 1, 1, 1, 1)
    hosts[0].healthy = hosts[1].healthy = False  # 3/5 = 60 % healthy
    assert routable_hosts(hosts, 0.6) == (hosts[2:], False)
    assert routable_hosts(hosts, 0.61) == (hosts, True)


def test_update_leaves_panic_when_hosts_recover() -> None:
    hosts = hosts_weighted(1, 1)
    hosts[0].healthy = hosts[1].healthy = False
    balancer = RoundRobinBalancer(hosts)
    assert balancer.in_panic
    hosts[0].healthy = True
    balancer.update(hosts)
    assert not balancer.in_panic
    assert {balancer.pick() for _ in range(4)} == {hosts[0]}


@pytest.mark.parametrize("policy", ALL)
def test_a_weight_below_1_is_refused_with_the_host_named(policy: str) -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.1:27017"):
        BALANCERS[policy](hosts_weighted(1, 0))


def test_a_panic_threshold_outside_0_to_1_is_refused() -> None:
    with pytest.raises(ValueError, match="panic_threshold"):
        RoundRobinBalancer([], panic_threshold=1.5)
