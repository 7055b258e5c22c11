"""Host discovery (DNS and a watched hosts file) and what a membership change does to a cluster.

Everything runs for real on 127.0.0.1: backends are TCP servers of the standard library, the proxy is
``Proxy`` / ``ProxyThread`` with a tcp listener, DNS is the system resolver. State that changes over time is
polled with a deadline, never waited for with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import wait

from meshproxy.cluster import Cluster
from meshproxy.cluster.discovery import (
    DnsDiscovery,
    HostsFileDiscovery,
    HostsFileError,
    parse_hosts_file,
    system_resolver,
)
from meshproxy.cluster.health import HealthCheckConfig, HealthChecker, tcp_check
from meshproxy.cluster.outlier import Outcome
from meshproxy.config import ClusterConfig, config_from_dict
from meshproxy.proxy import Proxy, ProxyThread
from meshproxy.stats import StatsStore

DEADLINE = 10.0
"""Seconds any polled condition gets before the test fails; conditions normally hold within milliseconds."""


# -- helpers ------------------------------------------------------------------------------------------------


wait_until = functools.partial(wait.wait_for, timeout=DEADLINE)
await_until = functools.partial(wait.await_until, timeout=DEADLINE)


class Backend:
    """A real TCP server on 127.0.0.1 that answers each line with ``<name>:<line>`` and counts connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        backend = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                backend.connections += 1
                for line in self.rfile:
                    self.wfile.write(f"{backend.name}:".encode() + line)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address: tuple[str, int] = self.server.server_address[:2]  # type: ignore[assignment]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def backends(*names: str) -> Iterator[list[Backend]]:
    started = [Backend(name) for name in names]
    try:
        yield started
    finally:
        for backend in started:
            backend.close()


def ask(address: tuple[str, int], line: str = "ping") -> str:
    """One connection through the proxy: send a line, return the answer ("" when the proxy closed it)."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def dead_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def admin_get(address: tuple[str, int], path: str) -> str:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as response:
        return str(response.read().decode())


def write_hosts(path: Path, entries: list[Any]) -> None:
    """Replace the hosts file atomically (write beside it, rename), as docs/clusters.md recommends."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(entries))
    os.replace(scratch, path)


def tcp_config(cluster: dict[str, Any], *, admin: bool = False) -> Any:
    return config_from_dict(
        {
            "admin": {"address": "127.0.0.1:0"} if admin else None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": cluster["name"]}],
            "clusters": [cluster],
        }
    )


def static_cluster(*ports: int, **options: Any) -> Cluster:
    config = ClusterConfig(name="c", hosts=[("127.0.0.1", p) for p in ports], **options)
    return Cluster.from_config(config, StatsStore())


# -- the hosts file format ----------------------------------------------------------------------------------


def test_a_hosts_file_lists_addresses_with_optional_weights() -> None:
    text = '- 10.0.0.1:27017\n- {address: "10.0.0.2:27017", weight: 3}\n- "[::1]:27017"\n'
    assert parse_hosts_file("h.yaml", text) == [
        (("10.0.0.1", 27017), 1),
        (("10.0.0.2", 27017), 3),
        (("::1", 27017), 1),
    ]
    assert parse_hosts_file("h.json", '["10.0.0.1:1", {"address": "10.0.0.1:2"}]') == [
        (("10.0.0.1", 1), 1),
        (("10.0.0.1", 2), 1),
    ]
    assert parse_hosts_file("h.json", "[]") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "hosts file h.yaml: empty (write [] for a cluster without hosts)"),
        ("{a: 1}", "hosts file h.yaml: expected a list of hosts, got dict"),
        ("[", "hosts file h.yaml: not YAML or JSON"),
        ("- 10.0.0.1:1\n- nowhere\n", "hosts file h.yaml: entry 1 ('nowhere'): 'nowhere' is not an address"),
        ("- {address: '10.0.0.1:1', weight: 0}", "hosts file h.yaml: entry 0 ({'address': '10.0.0.1:1', "
         "'weight': 0}): weight must be a whole number of at least 1, got 0"),
        ("- {weight: 2}", "entry 0 ({'weight': 2}): no address"),
        ("- {address: '10.0.0.1:1', colour: red}", "entry 0 ({'address': '10.0.0.1:1', 'colour': 'red'}): "
         "unknown field(s) colour"),
        ("- 10.0.0.1:1\n- 10.0.0.1:1\n", "entry 1 ('10.0.0.1:1'): 10.0.0.1:1 is already entry 0"),
        ("- 10.0.0.1:0", "entry 0 ('10.0.0.1:0'): port 0 is not an upstream port"),
        ("- 7", "entry 0 (7): expected \"host:port\" or {address, weight}"),
    ],
)
def test_a_broken_hosts_file_is_refused_naming_the_file_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(HostsFileError) as caught:
        parse_hosts_file("h.yaml", text)
    assert message in str(caught.value)


# -- membership changes on a cluster ------------------------------------------------------------------------


def test_a_membership_change_keeps_the_hosts_that_stay_and_their_state() -> None:
    cluster = static_cluster(7001, 7002, lb_policy="least_request", outlier_detection={})
    first, second = cluster.hosts
    hosts_list = cluster.hosts
    for _ in range(5):
        cluster.report(second, Outcome.GATEWAY_FAILURE)
    assert second.ejected
    second.stats.rq_active.set(2)  # two requests still on it
    first.weight = 1

    assert cluster.set_hosts([(("127.0.0.1", 7002), 1), (("127.0.0.1", 7003), 4)])
    assert first.removed  # for pools that keep connections to it open
    assert not second.removed

    assert cluster.hosts is hosts_list  # changed in place: whoever holds the list sees the new members
    assert [h.address[1] for h in cluster.hosts] == [7002, 7003]
    kept, new = cluster.hosts
    assert kept is second
    assert kept.ejected
    assert kept.stats.rq_active.value == 2
    assert new.weight == 4
    assert not new.ejected
    assert new.stats.cx_total.value == 0
    assert {cluster.pick().address[1] for _ in range(50)} == {7003}  # 7002 is still ejected, 7001 gone
    assert cluster.outlier is not None
    assert cluster.outlier.ejected_hosts() == ["127.0.0.1:7002"]
    values = cluster.store.values()
    assert values["cluster.c.membership_change"] == 1
    assert values["cluster.c.membership_total"] == 2
    assert values["cluster.c.membership_healthy"] == 1
    assert "cluster.c.host.127.0.0.1:7003.cx_total" in values


def test_the_same_answer_again_changes_nothing_and_is_counted_as_no_rebuild() -> None:
    cluster = static_cluster(7001, 7002)
    before = list(cluster.hosts)
    assert not cluster.set_hosts([(("127.0.0.1", 7001), 1), (("127.0.0.1", 7002), 1)])
    assert cluster.hosts == before
    assert cluster.stats.update_no_rebuild.value == 1
    assert cluster.stats.membership_change.value == 0


def test_a_weight_change_alone_rebuilds_the_balancer_without_a_membership_change() -> None:
    cluster = static_cluster(7001, 7002)
    assert cluster.set_hosts([(("127.0.0.1", 7001), 3), (("127.0.0.1", 7002), 1)])
    picks = [cluster.pick().address[1] for _ in range(400)]
    assert picks.count(7001) == 300
    assert cluster.stats.membership_change.value == 0


def test_a_removed_ejected_host_no_longer_counts_as_ejected() -> None:
    cluster = static_cluster(7001, 7002, outlier_detection={})
    gone = cluster.hosts[1]
    for _ in range(5):
        cluster.report(gone, Outcome.UPSTREAM_ERROR)
    assert cluster.store.values()["cluster.c.outlier_detection.ejections_active"] == 1
    cluster.set_hosts([(("127.0.0.1", 7001), 1)])
    assert cluster.store.values()["cluster.c.outlier_detection.ejections_active"] == 0
    assert not gone.ejected
    cluster.report(gone, Outcome.UPSTREAM_ERROR)  # a request that was still on it: ignored, nothing breaks
    assert cluster.outlier is not None
    assert cluster.outlier.ejected_hosts() == []


def test_a_cluster_without_hosts_refuses_connections_at_once() -> None:
    cluster = static_cluster(7001)
    cluster.set_hosts([])
    host = cluster.pick()
    assert host.address == ("127.0.0.1", 0)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(host.address)
    assert cluster.stats.upstream_cx_none_healthy.value == 1


async def test_the_health_checker_starts_and_stops_checking_hosts_as_they_come_and_go() -> None:
    """A newcomer is unhealthy until its first check passes; a removed host is no longer checked; the
    hosts that stay keep their state."""
    with backends("a", "b") as (a, b):
        cluster = static_cluster(a.address[1], dead_port())
        checker = HealthChecker(
            "c", cluster.hosts, tcp_check(), HealthCheckConfig(interval=0.02, timeout=1, unhealthy_threshold=1),
            on_change=lambda host: cluster.refresh(),
        )
        cluster.health = checker
        live, dead = cluster.hosts
        async with anyio.create_task_group() as tg:
            tg.start_soon(checker.run)
            await await_until(lambda: not dead.healthy, "the dead host to fail its checks")
            cluster.set_hosts([(a.address, 1), (b.address, 1)])
            newcomer = cluster.hosts[1]
            assert newcomer.address == b.address
            assert not newcomer.passes_health_checks
            await await_until(lambda: newcomer.passes_health_checks, "the newcomer's first check to pass")
            assert cluster.hosts[0] is live
            assert live.healthy
            attempts = checker.stats.attempt.value if checker.stats else 0
            await await_until(
                lambda: checker.stats is not None and checker.stats.attempt.value >= attempts + 6,
                "more checks of the remaining hosts",
            )
            assert [e.host for e in checker.events if e.event == "add_healthy"] == [newcomer.name]
            assert list(checker.hosts) == [live, newcomer]
            tg.cancel_scope.cancel()
        assert cluster.store.values()["cluster.c.membership_healthy"] == 2


async def test_a_health_checker_given_its_own_hosts_keeps_them_in_a_list_of_its_own() -> None:
    """Outside a cluster (a tuple of hosts): ``add_host`` and ``remove_host`` change the checker's list; a
    newcomer is unhealthy until a check passes, and a removed host's counts are forgotten."""
    with backends("a") as (a,):
        cluster = static_cluster(a.address[1], 7002)
        first, second = cluster.hosts
        checker = HealthChecker("c", (first,), tcp_check(), HealthCheckConfig(interval=1, timeout=1))
        checker.add_host(second)
        assert list(checker.hosts) == [first, second]
        assert not second.healthy
        assert checker.stats is not None
        assert checker.stats.healthy.value == 1
        checker.remove_host(second)
        assert list(checker.hosts) == [first]
        assert await checker.check_once(first)
        assert checker.stats.healthy.value == 1


def test_the_outlier_detector_tracks_added_and_removed_hosts() -> None:
    cluster = static_cluster(7001, outlier_detection={"interval": "1s"})
    detector = cluster.outlier
    assert detector is not None
    cluster.set_hosts([(("127.0.0.1", 7001), 1), (("127.0.0.1", 7002), 1)])
    newcomer = cluster.hosts[1]
    for _ in range(3):
        cluster.report(newcomer, Outcome.SUCCESS)
    cluster.report(newcomer, Outcome.UPSTREAM_ERROR)
    assert detector.success_rate(newcomer) is None  # the interval is still running
    cluster.tick_outlier_detection()
    assert detector.success_rate(newcomer) == 75.0
    assert cluster.success_rate(newcomer) == (75.0, "outlier_detection_interval")
    detector.remove_host(newcomer)
    assert detector.success_rate(newcomer) is None
    detector.add_host(newcomer)
    assert detector.state(newcomer).num_ejections == 0


def test_without_outlier_detection_the_success_rate_is_the_hosts_lifetime_share() -> None:
    cluster = static_cluster(7001)
    host = cluster.hosts[0]
    assert cluster.success_rate(host) == (None, "lifetime")
    for outcome in (Outcome.SUCCESS, Outcome.SUCCESS, Outcome.SUCCESS, Outcome.LOCAL_ORIGIN_FAILURE):
        cluster.report(host, outcome)
    assert cluster.success_rate(host) == (75.0, "lifetime")


# -- a watched hosts file behind a running proxy ------------------------------------------------------------


def test_editing_the_hosts_file_moves_new_connections_without_a_restart(tmp_path: Path) -> None:
    """Edit the file: the new host gets the new connections, the removed one none, while a connection
    already on the removed host keeps working; a broken edit keeps the last good hosts and is counted."""
    hosts_file = tmp_path / "hosts.json"
    with backends("a", "b") as (a, b):
        write_hosts(hosts_file, [a.hostport])
        config = tcp_config(
            {"name": "c", "hosts_file": {"path": str(hosts_file), "refresh_interval": "20ms"}}, admin=True
        )
        with ProxyThread(config) as thread:
            edge = thread.listener_address("edge")
            cluster = thread.proxy.clusters["c"]
            assert ask(edge) == "a:ping"
            with socket.create_connection(edge, timeout=5) as held:  # stays on a through the change
                held.sendall(b"first\n")
                assert held.recv(100) == b"a:first\n"

                write_hosts(hosts_file, [{"address": b.hostport, "weight": 2}])
                wait_until(lambda: [h.address for h in cluster.hosts] == [b.address], "b to replace a")
                a_connections = a.connections
                assert [ask(edge) for _ in range(5)] == ["b:ping"] * 5
                assert a.connections == a_connections  # the removed host got no new connection

                held.sendall(b"second\n")
                assert held.recv(100) == b"a:second\n"

            failures = cluster.stats.update_failure.value
            hosts_file.write_text('["127.0.0.1:1", "nowhere"]')
            wait_until(lambda: cluster.stats.update_failure.value > failures, "the broken file to be counted")
            assert [h.address for h in cluster.hosts] == [b.address]
            assert ask(edge) == "b:ping"

            write_hosts(hosts_file, [a.hostport, b.hostport])  # and a good edit after a broken one works
            wait_until(lambda: len(cluster.hosts) == 2, "both hosts")
            assert cluster.hosts[1].weight == 1  # the weight follows the file
            assert thread.admin_address is not None
            text = admin_get(thread.admin_address, "/clusters")
            values = thread.stats.values()
    assert f"c::{a.hostport}::health_flags::healthy" in text.splitlines()
    assert values["cluster.c.membership_change"] == 3  # the first read (from no hosts), a -> b, b -> a and b
    assert values["cluster.c.update_success"] >= 3
    assert values["cluster.c.membership_total"] == 2


def test_a_hosts_file_missing_at_startup_leaves_the_cluster_empty_until_it_appears(tmp_path: Path) -> None:
    hosts_file = tmp_path / "later.json"
    with backends("a") as (a,):
        config = tcp_config({"name": "c", "hosts_file": {"path": str(hosts_file), "refresh_interval": "20ms"}})
        with ProxyThread(config) as thread:
            edge = thread.listener_address("edge")
            assert ask(edge) == ""  # no host: the proxy closes the client connection
            assert thread.stats.values()["cluster.c.update_failure"] == 1
            write_hosts(hosts_file, [a.hostport])
            wait_until(lambda: len(thread.proxy.clusters["c"].hosts) == 1, "the file to be read")
            assert ask(edge) == "a:ping"


# -- DNS ----------------------------------------------------------------------------------------------------


async def test_localhost_resolves_through_the_system_resolver() -> None:
    """A real lookup; ``localhost`` may also give ::1, so only 127.0.0.1 is required."""
    assert ("127.0.0.1", 8080) in await system_resolver()("localhost", 8080)
    assert await system_resolver("v4_only")("localhost", 8080) == [("127.0.0.1", 8080)]


async def test_a_dns_cluster_proxies_to_what_localhost_resolves_to() -> None:
    with backends("a") as (a,):
        config = tcp_config(
            {"name": "c", "dns": {"name": "localhost", "port": a.address[1], "lookup_family": "v4_only"}}
        )
        async with Proxy(config) as proxy:
            assert [h.address for h in proxy.clusters["c"].hosts] == [a.address]
            answer = await anyio.to_thread.run_sync(ask, proxy.listener_address("edge"))
            values = proxy.stats.values()
    assert answer == "a:ping"
    assert values["cluster.c.update_success"] == 1
    assert values["cluster.c.membership_total"] == 1


async def test_a_lookup_that_hangs_fails_after_the_timeout_and_keeps_the_hosts() -> None:
    """The injected resolver never answers (an ``anyio.Event`` nobody sets)."""
    never = anyio.Event()

    async def hanging(name: str, port: int) -> list[tuple[str, int]]:
        await never.wait()
        return []

    cluster = static_cluster(7001)
    discovery = DnsDiscovery(cluster, "slow.internal", 7001, resolver=hanging, timeout=0.05)
    assert not await discovery.update()
    assert [h.address for h in cluster.hosts] == [("127.0.0.1", 7001)]
    assert cluster.stats.update_failure.value == 1


async def test_a_failed_lookup_keeps_the_last_good_hosts() -> None:
    """A real lookup of a name under ``.invalid`` (RFC 2606: never resolves) after a good answer."""
    cluster = static_cluster(7001)
    discovery = DnsDiscovery(cluster, "localhost", 7001, resolver=system_resolver("v4_only"))
    assert await discovery.update()
    kept = list(cluster.hosts)
    discovery.name = "no-such-host.invalid"
    assert not await discovery.update()
    assert cluster.hosts == kept
    assert (cluster.stats.update_success.value, cluster.stats.update_failure.value) == (1, 1)


async def test_a_changed_dns_answer_changes_the_hosts_and_health_and_ejection_follow() -> None:
    """Re-resolution on an interval with a changing answer. The resolver is injected: a plain function that
    returns whatever address list the test last put in ``answer`` (the system resolver cannot be made to
    change its answer for a name); everything else (proxy, health checks, outlier detection, backends) is
    real."""
    answer: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> list[tuple[str, int]]:
        assert (name, port) == ("orders.internal", 1)
        return list(answer)

    with backends("a", "b") as (a, b):
        dead = ("127.0.0.1", dead_port())
        answer[:] = [a.address, dead]
        config = tcp_config(
            {
                "name": "c",
                "dns": {"name": "orders.internal", "port": 1, "refresh_interval": "20ms"},
                "health_check": {"type": "tcp", "interval": "20ms", "timeout": "1s", "unhealthy_threshold": 1},
                "outlier_detection": {"interval": "1h", "consecutive_5xx": 3},
            }
        )
        async with Proxy(config, resolver=resolver) as proxy:
            cluster = proxy.clusters["c"]
            checker = proxy.health_checkers["c"]
            first_a, first_dead = cluster.hosts
            await await_until(lambda: not first_dead.passes_health_checks, "the dead host to fail its checks")
            for _ in range(3):  # a's answers were bad: outlier detection ejects it
                cluster.report(first_a, Outcome.UPSTREAM_ERROR)
            assert first_a.ejected

            answer[:] = [a.address, b.address]
            await await_until(lambda: [h.address for h in cluster.hosts] == [a.address, b.address], "b to join")
            newcomer = cluster.hosts[1]
            assert cluster.hosts[0] is first_a
            assert first_a.ejected
            assert first_dead not in checker.hosts
            await await_until(lambda: newcomer.passes_health_checks, "b's first check to pass")
            assert cluster.outlier is not None
            assert not cluster.outlier.is_ejected(newcomer)
            answers = [await anyio.to_thread.run_sync(ask, proxy.listener_address("edge")) for _ in range(4)]

            answer[:] = [b.address]
            await await_until(lambda: [h.address for h in cluster.hosts] == [b.address], "a to leave")
            assert cluster.outlier.ejected_hosts() == []
            values = proxy.stats.values()
    assert answers == ["b:ping"] * 4  # a is ejected, the dead host gone
    assert values["cluster.c.membership_change"] == 3  # the first answer (from no hosts), then two changes
    assert values["cluster.c.outlier_detection.ejections_active"] == 0
    assert values["cluster.c.health_check.healthy"] == 1


async def test_the_clusters_view_shows_health_checks_ejections_weight_and_success_rates() -> None:
    """Two clusters behind one proxy, each with a host that refuses connections: health checking marks one,
    outlier detection ejects the other after real connection failures; ``/clusters`` shows both, in text and
    JSON, with the live hosts' success rates and where they come from."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"alive\n")
        await writer.drain()
        writer.close()

    live = await asyncio.start_server(answer, "127.0.0.1", 0)
    live_port = live.sockets[0].getsockname()[1]
    dead_hc, dead_od = dead_port(), dead_port()
    config = config_from_dict(
        {
            "admin": {"address": "127.0.0.1:0"},
            "listeners": [
                {"name": "hc", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "hc"},
                {"name": "od", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "od"},
            ],
            "clusters": [
                {
                    "name": "hc",
                    "hosts": [f"127.0.0.1:{live_port}", f"127.0.0.1:{dead_hc}"],
                    "health_check": {"type": "tcp", "interval": "20ms", "unhealthy_threshold": 1},
                },
                {
                    "name": "od",
                    "hosts": [f"127.0.0.1:{live_port}", f"127.0.0.1:{dead_od}"],
                    "outlier_detection": {"interval": "50ms", "consecutive_5xx": 2, "base_ejection_time": "1h"},
                },
            ],
        }
    )
    async with Proxy(config) as proxy:
        od = proxy.clusters["od"]
        await await_until(lambda: not proxy.clusters["hc"].hosts[1].healthy, "the health check to fail")
        with anyio.fail_after(DEADLINE):
            while not od.hosts[1].ejected or od.success_rate(od.hosts[0])[0] is None:
                reader, writer = await asyncio.open_connection(*proxy.listener_address("od"))
                await reader.read()
                writer.close()
        for _ in range(2):
            reader, writer = await asyncio.open_connection(*proxy.listener_address("hc"))
            await reader.read()
            writer.close()
        assert proxy.admin_address is not None
        text = (await anyio.to_thread.run_sync(admin_get, proxy.admin_address, "/clusters")).splitlines()
        data = json.loads(await anyio.to_thread.run_sync(admin_get, proxy.admin_address, "/clusters?format=json"))
    live.close()
    assert f"hc::127.0.0.1:{dead_hc}::health_flags::/failed_health_check" in text
    assert f"hc::127.0.0.1:{live_port}::health_flags::healthy" in text
    assert f"hc::127.0.0.1:{live_port}::success_rate::100.0" in text
    assert f"hc::127.0.0.1:{live_port}::success_rate_source::lifetime" in text
    assert f"od::127.0.0.1:{dead_od}::health_flags::/failed_outlier_check" in text
    assert f"od::127.0.0.1:{live_port}::success_rate::100.0" in text
    assert f"od::127.0.0.1:{live_port}::success_rate_source::outlier_detection_interval" in text
    assert f"od::127.0.0.1:{live_port}::weight::1" in text
    hosts = {
        (c["name"], h["address"]["socket_address"]["port_value"]): h
        for c in data["cluster_statuses"]
        for h in c["host_statuses"]
    }
    assert hosts[("od", dead_od)]["health_status"] == {
        "healthy": False, "failed_active_health_check": False, "failed_outlier_check": True,
    }
    assert hosts[("hc", dead_hc)]["health_status"]["failed_active_health_check"] is True
    assert hosts[("od", live_port)]["success_rate"] == {"value": 100.0, "source": "outlier_detection_interval"}
    assert {s["name"]: s["value"] for s in hosts[("od", live_port)]["stats"]}["rq_active"] == 0


def test_a_hosts_file_discovery_polls_only_changed_files(tmp_path: Path) -> None:
    """Unchanged size and mtime, long enough ago: not even read; same content rewritten: read, not applied."""
    path = tmp_path / "hosts.json"
    write_hosts(path, ["127.0.0.1:7001"])
    old = time.time() - 60
    os.utime(path, (old, old))
    cluster = static_cluster(7009)
    discovery = HostsFileDiscovery(cluster, str(path))
    assert discovery.update(force=True) is True
    assert [h.address[1] for h in cluster.hosts] == [7001]
    assert discovery.update() is None
    write_hosts(path, ["127.0.0.1:7001"])
    assert discovery.update() is None  # same bytes: hashed, not parsed or applied again
    path.write_text('["127.0.0.1:7002"]')  # a same-size edit right away: seen thanks to the racy window
    assert discovery.update() is True
    assert [h.address[1] for h in cluster.hosts] == [7002]
