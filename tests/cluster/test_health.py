"""Active health checking: thresholds, intervals and the event log, then each checker against a real server.

Servers listen on 127.0.0.1 only. Checkers run every 50 ms; tests wait for a condition (with a generous
deadline) rather than sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.moto import moto_server
from support.wait import await_until

from meshproxy.cluster.cluster import Host, HostStats
from meshproxy.cluster.health import (
    HealthCheckConfig,
    HealthChecker,
    HealthCheckStats,
    dynamodb_check,
    grpc_check,
    http_check,
    mongo_check,
    tcp_check,
)
from meshproxy.stats import Counter, Gauge, StatsStore

FAST = HealthCheckConfig(interval=0.05, timeout=1.0, unhealthy_threshold=2, healthy_threshold=2)


@dataclass
class FakeHost:
    address: tuple[str, int]
    healthy: bool = True

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


class Scripted:
    """A checker answering from a script: ``True``, ``False`` or an exception to raise."""

    def __init__(self, *results: bool | BaseException) -> None:
        self.results = list(results)

    async def __call__(self, address: tuple[str, int], timeout: float) -> bool:
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


@asynccontextmanager
async def running(checker: HealthChecker) -> AsyncIterator[HealthCheckStats]:
    """``checker.run()`` in the background for the block; yields its stats."""
    assert checker.stats is not None
    async with anyio.create_task_group() as group:
        group.start_soon(checker.run)
        yield checker.stats
        group.cancel_scope.cancel()


# -- thresholds, stats, events: a scripted checker, one check at a time ------------------------------------


async def test_a_healthy_host_is_ejected_only_after_unhealthy_threshold_consecutive_failures() -> None:
    host = FakeHost(("127.0.0.1", 1))
    checker = HealthChecker("c", [host], Scripted(False, True, False, False, False), FAST)
    for expected in (True, True, True, True):  # fail, pass (resets the count), fail, fail -> ejected on the 4th
        assert host.healthy is expected
        await checker.check_once(host)
    assert host.healthy is False
    assert [e.event for e in checker.events] == ["first_failure", "first_failure", "eject_unhealthy"]


async def test_a_host_ejected_by_outlier_detection_is_still_marked_down_by_its_failing_checks() -> None:
    """Ejection and health checks are two verdicts: a dead host ejected by outlier detection must still be
    marked down by its checks, or traffic would go back to it each time its ejection ends."""
    counter, gauge = Counter(), Gauge()
    host = Host(("127.0.0.1", 1), HostStats(counter, gauge, counter, counter, gauge))
    host.ejected = True
    checker = HealthChecker("c", [host], Scripted(False, False, True, True), FAST)
    for _ in range(2):
        await checker.check_once(host)
    assert host.passes_health_checks is False
    assert [e.event for e in checker.events] == ["first_failure", "eject_unhealthy"]
    for _ in range(2):
        await checker.check_once(host)
    assert host.passes_health_checks is True
    assert host.healthy is False  # still ejected: outlier detection decides when it returns


async def test_an_unhealthy_host_returns_after_healthy_threshold_consecutive_successes() -> None:
    host = FakeHost(("127.0.0.1", 1))
    checker = HealthChecker("c", [host], Scripted(False, False, True, False, True, True), FAST)
    for _ in range(2):
        await checker.check_once(host)
    assert host.healthy is False
    for _ in range(3):  # pass, fail (resets), pass
        await checker.check_once(host)
        assert host.healthy is False
    await checker.check_once(host)
    assert host.healthy is True
    assert checker.events[-1].event == "add_healthy"


async def test_hosts_can_start_unhealthy_and_one_success_admits_them_as_in_envoy() -> None:
    host = FakeHost(("127.0.0.1", 1))
    config = HealthCheckConfig(initially_healthy=False, healthy_threshold=5)
    checker = HealthChecker("c", [host], Scripted(True), config)
    assert host.healthy is False
    await checker.check_once(host)
    assert host.healthy is True


async def test_stats_tell_network_failures_from_failures_and_the_gauge_counts_healthy_hosts() -> None:
    store = StatsStore()
    hosts = [FakeHost(("127.0.0.1", 1)), FakeHost(("127.0.0.1", 2))]
    script = Scripted(True, False, ConnectionRefusedError(), ValueError("garbage"))
    checker = HealthChecker("orders", hosts, script, FAST, stats=HealthCheckStats.register(store, "orders"))
    for _ in range(4):
        await checker.check_once(hosts[0])

    def value(stat: str) -> float:
        found = store.counter(f"cluster.orders.health_check.{stat}", prom=f"meshproxy_cluster_health_check_{stat}",
                              labels={"cluster": "orders"})
        assert isinstance(found, Counter)
        return found.value

    assert (value("attempt"), value("success"), value("failure"), value("network_failure")) == (4, 1, 2, 1)
    healthy = store.gauge("cluster.orders.health_check.healthy", prom="meshproxy_cluster_health_check_healthy",
                          labels={"cluster": "orders"})
    assert isinstance(healthy, Gauge)
    assert healthy.value == 1  # hosts[0] was ejected after failures 2 and 3; hosts[1] never checked
    assert b"meshproxy_cluster_health_check_network_failure_total{cluster=\"orders\"} 1" in store.prometheus()


async def test_a_check_slower_than_the_timeout_is_a_network_failure() -> None:
    async def hang(address: tuple[str, int], timeout: float) -> bool:
        await anyio.sleep(10)
        return True

    host = FakeHost(("127.0.0.1", 1))
    checker = HealthChecker("c", [host], hang, HealthCheckConfig(timeout=0.05))
    assert await checker.check_once(host) is False
    assert checker.stats is not None
    assert checker.stats.network_failure.value == 1


def test_the_next_interval_depends_on_health_traffic_and_jitter() -> None:
    busy, idle, sick = FakeHost(("h", 1)), FakeHost(("h", 2)), FakeHost(("h", 3))
    config = HealthCheckConfig(interval=5, unhealthy_interval=1, no_traffic_interval=60)
    checker = HealthChecker("c", [busy, idle, sick], Scripted(), config, has_traffic=lambda h: h is not idle)
    sick.healthy = False
    assert (checker.next_interval(busy), checker.next_interval(idle), checker.next_interval(sick)) == (5, 60, 1)
    jittery = HealthChecker("c", [busy], Scripted(), HealthCheckConfig(interval=5, jitter=2), rng=random.Random(1))
    waits = [jittery.next_interval(busy) for _ in range(100)]
    assert all(5 <= w < 7 for w in waits)
    assert max(waits) - min(waits) > 1


async def test_transitions_go_to_the_event_log_the_json_lines_sink_and_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = tmp_path / "health.jsonl"
    host = FakeHost(("127.0.0.1", 9))
    config = HealthCheckConfig(unhealthy_threshold=1, healthy_threshold=1, event_log_path=str(sink), event_log_size=2)
    checker = HealthChecker("c", [host], Scripted(False, True, False), config, clock=lambda: 42.0)
    with caplog.at_level(logging.INFO, logger="meshproxy.cluster.health"):
        for _ in range(3):
            await checker.check_once(host)
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["eject_unhealthy", "add_healthy", "eject_unhealthy"]
    assert lines[0] == {"time": 42.0, "cluster": "c", "host": "127.0.0.1:9", "event": "eject_unhealthy",
                        "detail": "check failed"}
    assert [e.event for e in checker.events] == ["add_healthy", "eject_unhealthy"]  # bounded: the oldest went
    assert sum("eject_unhealthy" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("interval", 0, "positive"),
        ("timeout", -1, "positive"),
        ("jitter", -1, "negative"),
        ("unhealthy_threshold", 0, "at least 1"),
        ("healthy_threshold", 0, "at least 1"),
        ("unhealthy_interval", 0, "unhealthy_interval must be positive"),
        ("no_traffic_interval", -5, "no_traffic_interval must be positive"),
    ],
)
def test_bad_knobs_are_refused(knob: str, value: float, message: str) -> None:
    knobs: dict[str, Any] = {knob: value}
    with pytest.raises(ValueError, match=message):
        HealthCheckConfig(**knobs)


# -- TCP: a real listener that goes away and comes back ------------------------------------------------------


async def _echo_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await reader.read(4) == b"PING":
        writer.write(b"PONG and more")
        await writer.drain()
    writer.close()


async def test_tcp_a_stopped_server_is_ejected_and_a_restarted_one_comes_back() -> None:
    server = await asyncio.start_server(_echo_pong, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host = Host(("127.0.0.1", port), stats=_host_stats())
    checker = HealthChecker("tcp", [host], tcp_check(), FAST)
    async with running(checker) as stats:
        await await_until(lambda: stats.success.value >= 2)
        assert host.healthy

        server.close()
        await server.wait_closed()
        await await_until(lambda: not host.healthy)
        assert stats.network_failure.value >= FAST.unhealthy_threshold

        successes = stats.success.value
        server = await asyncio.start_server(_echo_pong, "127.0.0.1", port)
        try:
            await await_until(lambda: host.healthy)
            assert stats.success.value - successes >= FAST.healthy_threshold
            assert [e.event for e in checker.events] == ["first_failure", "eject_unhealthy", "add_healthy"]
        finally:
            server.close()


async def test_tcp_send_and_expect_a_reply_prefix() -> None:
    server = await asyncio.start_server(_echo_pong, "127.0.0.1", 0)
    address = ("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        assert await tcp_check(send=b"PING", expect=b"PONG")(address, 1.0) is True
        assert await tcp_check(send=b"PING", expect=b"PANG")(address, 1.0) is False
    finally:
        server.close()


# -- HTTP and DynamoDB: a tiny HTTP/1.1 server with a settable answer ----------------------------------------


class TinyHttp:
    """Answers every request with ``status`` and ``body``; remembers the last request's head."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"ok"
        self.last_request = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        self.last_request = head
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(self.body), self.body))
        await writer.drain()
        writer.close()


@pytest.fixture
async def http() -> AsyncIterator[tuple[TinyHttp, tuple[str, int]]]:
    app = TinyHttp()
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    yield app, ("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


async def test_http_a_503_ejects_the_host_as_a_failure_not_a_network_failure(
    http: tuple[TinyHttp, tuple[str, int]],
) -> None:
    app, address = http
    host = FakeHost(address)
    checker = HealthChecker("web", [host], http_check("/healthz"), FAST)
    async with running(checker) as stats:
        await await_until(lambda: stats.success.value >= 1)
        assert app.last_request.startswith(b"GET /healthz HTTP/1.1\r\n")
        app.status = 503
        await await_until(lambda: not host.healthy)
        assert stats.network_failure.value == 0
        app.status = 200
        await await_until(lambda: host.healthy)


async def test_http_expected_statuses_are_configurable(http: tuple[TinyHttp, tuple[str, int]]) -> None:
    app, address = http
    app.status = 204
    assert await http_check()(address, 1.0) is False
    assert await http_check(expected_statuses=range(200, 300))(address, 1.0) is True


async def test_dynamodb_auth_errors_mean_the_service_answers_and_5xx_does_not(
    http: tuple[TinyHttp, tuple[str, int]],
) -> None:
    app, address = http
    check = dynamodb_check()
    app.status, app.body = 400, b'{"__type":"com.amazon.coral.service#MissingAuthenticationTokenException"}'
    assert await check(address, 1.0) is True
    assert b"X-Amz-Target: DynamoDB_20120810.ListTables" in app.last_request
    app.body = b'{"__type":"com.amazonaws.dynamodb.v20120810#ValidationException"}'
    assert await check(address, 1.0) is False
    app.status, app.body = 500, b'{"__type":"InternalServerError"}'
    assert await check(address, 1.0) is False


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    with moto_server() as address:
        yield address


async def test_dynamodb_list_tables_against_moto(moto: tuple[str, int]) -> None:
    assert await dynamodb_check()(moto, 2.0) is True


# -- gRPC: a real grpcio server with the standard health service ---------------------------------------------


@pytest.fixture
def grpc_health() -> Iterator[tuple[Any, tuple[str, int]]]:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(4))
    servicer = health.HealthServicer()
    servicer.set("orders.Orders", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, ("127.0.0.1", port)
    finally:
        server.stop(grace=None)


async def test_grpc_not_serving_ejects_the_host(grpc_health: tuple[Any, tuple[str, int]]) -> None:
    from grpc_health.v1 import health_pb2

    servicer, address = grpc_health
    host = FakeHost(address)
    checker = HealthChecker("grpc", [host], grpc_check("orders.Orders"), FAST)
    async with running(checker) as stats:
        await await_until(lambda: stats.success.value >= 1)
        servicer.set("orders.Orders", health_pb2.HealthCheckResponse.NOT_SERVING)
        await await_until(lambda: not host.healthy)
        assert stats.network_failure.value == 0
        servicer.set("orders.Orders", health_pb2.HealthCheckResponse.SERVING)
        await await_until(lambda: host.healthy)


async def test_grpc_an_unknown_service_is_a_failure(grpc_health: tuple[Any, tuple[str, int]]) -> None:
    _, address = grpc_health
    assert await grpc_check("no.Such")(address, 1.0) is False


# -- MongoDB: hello against SecantusDB -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(tmp_path_factory.mktemp("secantus"))) as server:
        host, port = server.address
        yield (str(host), int(port))


async def test_mongo_hello_answers_ok(secantus: tuple[str, int]) -> None:
    check = mongo_check()
    assert await check(secantus, 2.0) is True
    assert await check(secantus, 2.0) is True  # a fresh connection and request id each time


async def test_mongo_a_closed_port_is_a_network_failure() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    host = FakeHost(("127.0.0.1", port))
    checker = HealthChecker("mongo", [host], mongo_check(), FAST)
    assert await checker.check_once(host) is False
    assert checker.stats is not None
    assert checker.stats.network_failure.value == 1


def _host_stats() -> HostStats:
    return HostStats(cx_total=Counter(), cx_active=Gauge(), cx_connect_fail=Counter(), rq_total=Counter(),
                     rq_active=Gauge())
