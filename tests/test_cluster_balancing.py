"""A cluster picks hosts with the balancer its ``lb_policy`` names, skipping unhealthy hosts (until the panic
threshold), and the sessions use it: several upstreams behind one sidecar share the connections."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from meshproxy.cluster import Cluster
from meshproxy.config import ClusterConfig, config_from_dict
from meshproxy.proxy import Proxy
from meshproxy.stats import StatsStore

HOSTS = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]


def cluster(**options: Any) -> Cluster:
    return Cluster.from_config(ClusterConfig(name="c", hosts=HOSTS, **options), StatsStore())


def test_round_robin_takes_the_hosts_in_turn() -> None:
    c = cluster()
    assert [c.pick().address[1] for _ in range(6)] == [7001, 7002, 7003, 7001, 7002, 7003]


def test_least_request_sends_the_busy_host_only_what_two_random_choices_cannot_avoid() -> None:
    """Power of two choices: the busy host is picked only when both samples land on it, 1/9 of the time with
    three hosts, against 1/3 under round robin."""
    c = cluster(lb_policy="least_request")
    c.hosts[0].stats.rq_active.set(50)
    picks = Counter(c.pick().address[1] for _ in range(9000))
    assert 0.08 < picks[7001] / 9000 < 0.15


def test_an_unhealthy_host_is_skipped_once_the_balancer_is_refreshed() -> None:
    c = cluster()
    c.hosts[1].healthy = False
    c.refresh()
    assert {c.pick().address[1] for _ in range(30)} == {7001, 7003}


def test_below_the_panic_threshold_every_host_takes_traffic() -> None:
    c = cluster(panic_threshold=50)
    c.hosts[0].healthy = c.hosts[1].healthy = False  # 33 % healthy < 50 %
    c.refresh()
    assert {c.pick().address[1] for _ in range(30)} == {7001, 7002, 7003}


def test_ring_hash_sends_a_key_to_the_same_host() -> None:
    c = cluster(lb_policy="ring_hash")
    assert len({c.pick(b"orders/customer#42").address for _ in range(20)}) == 1


async def test_connections_to_a_sidecar_of_three_upstreams_are_spread_over_them() -> None:
    seen: list[int] = []

    def server(number: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(number)
            writer.write(b"%d" % number)
            await writer.drain()
            writer.close()

        return handle

    servers = [await asyncio.start_server(server(n), "127.0.0.1", 0) for n in range(3)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "three"}],
            "clusters": [{"name": "three", "hosts": [["127.0.0.1", p] for p in ports]}],
        }
    )
    async with Proxy(config) as proxy:
        answers = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
    for s in servers:
        s.close()
    assert sorted(answers) == [b"0", b"0", b"1", b"1", b"2", b"2"]


async def test_active_health_checking_moves_connections_off_a_dead_host() -> None:
    """Two upstreams, one of them not listening: the TCP health check marks it unhealthy, after which every
    connection goes to the live one; the checks and the transition are counted."""
    import socket

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"alive")
        await writer.drain()
        writer.close()

    live = await asyncio.start_server(answer, "127.0.0.1", 0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "two"}],
            "clusters": [
                {
                    "name": "two",
                    "hosts": [["127.0.0.1", dead_port], ["127.0.0.1", live.sockets[0].getsockname()[1]]],
                    "health_check": {"type": "tcp", "interval": "50ms", "timeout": "200ms", "unhealthy_threshold": 1},
                }
            ],
        }
    )
    async with Proxy(config) as proxy:
        dead = proxy.clusters["two"].hosts[0]
        async with asyncio.timeout(10):
            while dead.healthy:  # noqa: ASYNC110 - no event to await: the checker's state is polled
                await asyncio.sleep(0.02)
        answers = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
        stats = proxy.stats.values()
    live.close()
    assert answers == [b"alive"] * 6
    assert stats["cluster.two.health_check.healthy"] == 1
    assert stats["cluster.two.health_check.network_failure"] >= 1
    assert proxy.health_checkers["two"].events[-1].event == "eject_unhealthy"


async def test_outlier_detection_ejects_a_host_whose_connections_fail() -> None:
    """Two upstreams, one refusing connections: after 5 consecutive failures there (Envoy's default) outlier
    detection ejects it, and every later connection goes to the live host."""
    import socket

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"alive")
        await writer.drain()
        writer.close()

    live = await asyncio.start_server(answer, "127.0.0.1", 0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    config = config_from_dict(
        {
            "admin": None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "two"}],
            "clusters": [
                {
                    "name": "two",
                    "hosts": [["127.0.0.1", dead_port], ["127.0.0.1", live.sockets[0].getsockname()[1]]],
                    "outlier_detection": {},
                }
            ],
        }
    )
    async with Proxy(config) as proxy:
        answers = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
        stats = proxy.stats.values()
        ejected = proxy.clusters["two"].hosts[0].ejected
    live.close()
    assert answers.count(b"") == 5  # the five connections the dead host refused before its ejection
    assert answers[-10:] == [b"alive"] * 10
    assert ejected
    assert stats["cluster.two.outlier_detection.ejections_active"] == 1



def test_a_sidecar_with_several_upstreams_checks_health_and_detects_outliers() -> None:
    from meshproxy.config import sidecar_config

    one = sidecar_config("grpc", listen=("127.0.0.1", 0), upstream=("127.0.0.1", 1), admin=None)
    three = sidecar_config("mongo", listen=("127.0.0.1", 0), upstream=HOSTS, admin=None)
    assert one.clusters[0].health_check is None
    assert one.clusters[0].outlier_detection is None
    check = three.clusters[0].health_check
    assert check is not None
    assert check.type == "mongo"
    assert three.clusters[0].outlier_detection is not None
