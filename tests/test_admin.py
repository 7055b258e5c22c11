"""The admin endpoint, served on 127.0.0.1:0 and spoken to by the standard library's HTTP client and raw
sockets: every route, keep-alive, and bad requests that must never bring the server down."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.admin import (
    MAX_BODY_SIZE,
    AdminRequest,
    AdminResponse,
    AdminServer,
    AdminState,
    ClusterStatus,
    HostStatus,
    Route,
)
from meshproxy.config import config_from_dict
from meshproxy.stats import StatsStore

Address = tuple[str, int]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str


@asynccontextmanager
async def serving(server: AdminServer) -> AsyncIterator[Address]:
    async with anyio.create_task_group() as group:
        address = await group.start(server.serve)
        try:
            yield address
        finally:
            group.cancel_scope.cancel()


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> Reply:
    conn.request(method, path, body=body)
    response = conn.getresponse()
    data = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data.decode())


async def request(address: Address, method: str, path: str, body: bytes | None = None) -> Reply:
    def run() -> Reply:
        conn = http.client.HTTPConnection(*address, timeout=5)
        try:
            return _exchange(conn, method, path, body)
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(run)


async def get(address: Address, path: str) -> Reply:
    return await request(address, "GET", path)


async def raw(address: Address, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read everything until the server closes it."""

    def run() -> bytes:
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    return await anyio.to_thread.run_sync(run)


def _clusters() -> list[ClusterStatus]:
    return [
        ClusterStatus(
            "backend",
            [
                HostStatus(
                    "127.0.0.1:27017", cx_active=2, rq_active=1, rq_total=40, cx_connect_fail=3, weight=3,
                    success_rate=97.5, success_rate_source="outlier_detection_interval",
                ),
                HostStatus("10.0.0.2:27018", healthy=False, failed_active_health_check=True),
                HostStatus("10.0.0.3:27018", healthy=False, ejected=True, success_rate_source="lifetime"),
            ],
        )
    ]


def _server(**kwargs: Any) -> AdminServer:
    stats = kwargs.pop("stats", None)
    stats = StatsStore() if stats is None else stats
    return AdminServer(stats, address=("127.0.0.1", 0), **kwargs)


# -- binding ------------------------------------------------------------------------------------------------


def test_admin_binds_to_loopback_unless_configured_otherwise() -> None:
    assert AdminServer(StatsStore()).address == ("127.0.0.1", 9901)


async def test_serve_reports_the_bound_loopback_address_for_port_zero() -> None:
    server = _server()
    async with serving(server) as address:
        assert address[0] == "127.0.0.1"
        assert address[1] != 0
        assert server.address == address
        assert (await get(address, "/ready")).status == 503


# -- routes ---------------------------------------------------------------------------------------------------


async def test_index_lists_every_route() -> None:
    async with serving(_server()) as address:
        for path in ("/", "/help"):
            reply = await get(address, path)
            assert reply.status == 200
            assert reply.headers["content-type"] == "text/plain; charset=utf-8"
            for route in ("/stats", "/stats/prometheus", "/clusters", "/ready", "/healthcheck/fail",
                          "/healthcheck/ok", "/config_dump", "/server_info"):
                assert f"  {route} (" in reply.body


async def test_stats_serves_the_store_as_sorted_envoy_text() -> None:
    stats = StatsStore()
    stats.counter("mongo.app.cmd.insert.total").inc(137)
    stats.gauge("mongo.app.op_active").set(2)
    stats.histogram("mongo.app.cmd.insert.reply_time_ms").record(4)
    async with serving(_server(stats=stats)) as address:
        reply = await get(address, "/stats")
    assert reply.status == 200
    lines = reply.body.splitlines()
    assert lines == sorted(lines)
    assert "mongo.app.cmd.insert.total: 137" in lines
    assert "mongo.app.op_active: 2" in lines
    assert "mongo.app.cmd.insert.reply_time_ms: P0(nan,4) P25(nan,4)" in reply.body


async def test_stats_json_filter_and_usedonly() -> None:
    stats = StatsStore()
    stats.counter("mongo.app.cmd.find.total").inc(3)
    stats.counter("mongo.app.cmd.delete.total")
    stats.counter("cluster.up.upstream_cx_total").inc()
    async with serving(_server(stats=stats)) as address:
        as_json = await get(address, "/stats?format=json&filter=%5Emongo%5C.")
        filtered = await get(address, "/stats?filter=cmd%5C..*%5C.total&usedonly")
    assert as_json.status == 200
    assert as_json.headers["content-type"] == "application/json"
    assert json.loads(as_json.body) == {
        "stats": [
            {"name": "mongo.app.cmd.delete.total", "value": 0},
            {"name": "mongo.app.cmd.find.total", "value": 3},
        ]
    }
    assert filtered.body == "mongo.app.cmd.find.total: 3\n"


async def test_stats_refuses_a_bad_regex_or_format_with_400() -> None:
    async with serving(_server()) as address:
        bad_regex = await get(address, "/stats?filter=(unclosed")
        bad_format = await get(address, "/stats?format=xml")
    assert (bad_regex.status, bad_format.status) == (400, 400)
    assert "invalid filter regex" in bad_regex.body
    assert "unknown format" in bad_format.body


async def test_stats_prometheus_is_labelled_prometheus_text() -> None:
    stats = StatsStore()
    labels = {"prefix": "app", "db": "shop", "collection": "orders", "command": "insert"}
    stats.counter("mongo.app.cmd.insert.total", prom="meshproxy_mongo_command", labels=labels).inc(137)
    async with serving(_server(stats=stats)) as address:
        reply = await get(address, "/stats/prometheus")
        via_stats = await get(address, "/stats?format=prometheus&filter=cmd")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(reply.body)}
    (sample,) = families["meshproxy_mongo_command"].samples
    assert (sample.name, sample.labels, sample.value) == ("meshproxy_mongo_command_total", labels, 137)
    assert "meshproxy_admin_downstream_rq" in families  # the admin counts its own requests
    assert via_stats.headers["content-type"] == reply.headers["content-type"]
    assert 'meshproxy_mongo_command_total{collection="orders"' in via_stats.body
    assert "meshproxy_admin" not in via_stats.body


async def test_clusters_prints_cluster_host_stat_value_lines() -> None:
    async with serving(_server(clusters=_clusters)) as address:
        reply = await get(address, "/clusters")
    assert reply.status == 200
    assert reply.body.splitlines() == [
        "backend::127.0.0.1:27017::cx_active::2",
        "backend::127.0.0.1:27017::cx_connect_fail::3",
        "backend::127.0.0.1:27017::rq_active::1",
        "backend::127.0.0.1:27017::rq_total::40",
        "backend::127.0.0.1:27017::health_flags::healthy",
        "backend::127.0.0.1:27017::weight::3",
        "backend::127.0.0.1:27017::success_rate::97.5",
        "backend::127.0.0.1:27017::success_rate_source::outlier_detection_interval",
        "backend::10.0.0.2:27018::cx_active::0",
        "backend::10.0.0.2:27018::cx_connect_fail::0",
        "backend::10.0.0.2:27018::rq_active::0",
        "backend::10.0.0.2:27018::rq_total::0",
        "backend::10.0.0.2:27018::health_flags::/failed_health_check",
        "backend::10.0.0.2:27018::weight::1",
        "backend::10.0.0.2:27018::success_rate::-1",
        "backend::10.0.0.3:27018::cx_active::0",
        "backend::10.0.0.3:27018::cx_connect_fail::0",
        "backend::10.0.0.3:27018::rq_active::0",
        "backend::10.0.0.3:27018::rq_total::0",
        "backend::10.0.0.3:27018::health_flags::/failed_outlier_check",
        "backend::10.0.0.3:27018::weight::1",
        "backend::10.0.0.3:27018::success_rate::-1",
        "backend::10.0.0.3:27018::success_rate_source::lifetime",
    ]


async def test_clusters_json_has_envoys_shape() -> None:
    async with serving(_server(clusters=_clusters)) as address:
        reply = await get(address, "/clusters?format=json")
    (cluster,) = json.loads(reply.body)["cluster_statuses"]
    assert cluster["name"] == "backend"
    first, second, third = cluster["host_statuses"]
    assert first["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 27017}}
    assert {s["name"]: s["value"] for s in first["stats"]} == {
        "cx_active": 2, "cx_connect_fail": 3, "rq_active": 1, "rq_total": 40,
    }
    assert [h["health_status"] for h in (first, second, third)] == [
        {"healthy": True, "failed_active_health_check": False, "failed_outlier_check": False},
        {"healthy": False, "failed_active_health_check": True, "failed_outlier_check": False},
        {"healthy": False, "failed_active_health_check": False, "failed_outlier_check": True},
    ]
    assert [h["weight"] for h in (first, second, third)] == [3, 1, 1]
    assert [h["success_rate"] for h in (first, second, third)] == [
        {"value": 97.5, "source": "outlier_detection_interval"},
        {"value": None, "source": None},
        {"value": None, "source": "lifetime"},
    ]


async def test_ready_reports_each_server_state() -> None:
    state = AdminState()
    async with serving(_server(state=state)) as address:
        seen = [(r.status, r.body) for r in [await get(address, "/ready")]]
        state.live = True
        seen.append(((r := await get(address, "/ready")).status, r.body))
        state.health_check_failed = True
        seen.append(((r := await get(address, "/ready")).status, r.body))
        state.health_check_failed = False
        state.draining = True
        state.live = False
        seen.append(((r := await get(address, "/ready")).status, r.body))
    assert seen == [
        (503, "PRE_INITIALIZING\n"),
        (200, "LIVE\n"),
        (503, "FAILED_HEALTHCHECK\n"),
        (503, "DRAINING\n"),
    ]


async def test_healthcheck_fail_makes_ready_fail_until_healthcheck_ok() -> None:
    state = AdminState(live=True)
    async with serving(_server(state=state)) as address:
        assert (await get(address, "/ready")).status == 200
        failed = await request(address, "POST", "/healthcheck/fail")
        assert (failed.status, failed.body, state.health_check_failed) == (200, "OK\n", True)
        assert ((r := await get(address, "/ready")).status, r.body) == (503, "FAILED_HEALTHCHECK\n")
        ok = await request(address, "POST", "/healthcheck/ok")
        assert (ok.status, state.health_check_failed) == (200, False)
        assert ((r := await get(address, "/ready")).status, r.body) == (200, "LIVE\n")


async def test_a_wrong_method_is_405_with_the_allowed_methods() -> None:
    state = AdminState(live=True)
    async with serving(_server(state=state)) as address:
        get_on_post = await get(address, "/healthcheck/fail")
        post_on_get = await request(address, "POST", "/stats")
        delete = await request(address, "DELETE", "/ready")
    assert (get_on_post.status, get_on_post.headers["allow"]) == (405, "POST")
    assert (post_on_get.status, post_on_get.headers["allow"]) == (405, "GET, HEAD")
    assert delete.status == 405
    assert state.health_check_failed is False  # a GET never flips the switch


async def test_an_unknown_path_is_404_with_the_route_index() -> None:
    async with serving(_server()) as address:
        reply = await get(address, "/statz")
    assert reply.status == 404
    assert "invalid path: /statz" in reply.body
    assert "/stats/prometheus" in reply.body


async def test_config_dump_returns_the_configuration_as_json() -> None:
    dump = {"listeners": [{"name": "mongo", "address": ["127.0.0.1", 27018]}], "drain_timeout": 10.0}
    async with serving(_server(config_dump=lambda: dump)) as address:
        reply = await get(address, "/config_dump")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == dump


async def test_server_info_reports_version_state_and_uptime() -> None:
    async with serving(_server(state=AdminState(live=True))) as address:
        info = json.loads((await get(address, "/server_info")).body)
    assert info["state"] == "LIVE"
    assert info["version"]
    assert info["uptime_seconds"] >= 0
    assert info["admin_address"] == list(address)


async def test_head_answers_headers_without_a_body() -> None:
    async with serving(_server()) as address:
        reply = await request(address, "HEAD", "/")
    assert reply.status == 200
    assert int(reply.headers["content-length"]) > 0
    assert reply.body == ""


# -- connection handling --------------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    stats = StatsStore()
    async with serving(_server(stats=stats, state=AdminState(live=True))) as address:

        def run() -> tuple[list[int], int]:
            conn = http.client.HTTPConnection(*address, timeout=5)
            try:
                statuses = [_exchange(conn, "GET", "/ready").status]
                sock = conn.sock
                statuses += [_exchange(conn, m, p).status for m, p in
                             [("GET", "/stats"), ("GET", "/nope"), ("POST", "/healthcheck/ok"), ("GET", "/")]]
                assert conn.sock is sock  # http.client reconnects silently; the socket must not change
                return statuses, len(statuses)
            finally:
                conn.close()

        statuses, _ = await anyio.to_thread.run_sync(run)
    assert statuses == [200, 200, 404, 200, 200]
    assert stats.values()["http.admin.downstream_cx_total"] == 1
    assert stats.values()["http.admin.downstream_rq_total"] == 5
    assert stats.values()["http.admin.downstream_rq_4xx"] == 1


async def test_concurrent_clients_are_all_answered() -> None:
    stats = StatsStore()
    stats.counter("mongo.app.op_msg").inc(9)
    replies: list[Reply] = []
    async with serving(_server(stats=stats)) as address, anyio.create_task_group() as group:
        for _ in range(20):

            async def one() -> None:
                replies.append(await get(address, "/stats?filter=op_msg"))

            group.start_soon(one)
    assert [(r.status, r.body) for r in replies] == [(200, "mongo.app.op_msg: 9\n")] * 20


async def test_an_http_1_0_request_is_answered_then_the_connection_closed() -> None:
    async with serving(_server()) as address:
        reply = await raw(address, b"GET /ready HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert reply.endswith(b"\r\n\r\nPRE_INITIALIZING\n")  # raw() returned: the server closed


async def test_garbage_is_answered_400_and_the_server_keeps_serving() -> None:
    async with serving(_server()) as address:
        garbage = await raw(address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        no_host = await raw(address, b"GET /ready HTTP/1.1\r\n\r\n")  # HTTP/1.1 requires Host
        assert (await get(address, "/")).status == 200
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in garbage
    assert no_host.startswith(b"HTTP/1.1 400 ")


async def test_oversized_headers_are_refused_with_431() -> None:
    async with serving(_server()) as address:
        reply = await raw(address, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        assert (await get(address, "/")).status == 200
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_an_oversized_body_is_refused_with_413() -> None:
    state = AdminState(live=True)
    async with serving(_server(state=state)) as address:
        reply = await request(address, "POST", "/healthcheck/fail", body=b"x" * (MAX_BODY_SIZE + 1))
        assert (await get(address, "/ready")).status == 200
    assert reply.status == 413
    assert state.health_check_failed is False


async def test_a_client_vanishing_mid_request_does_not_disturb_others() -> None:
    async with serving(_server()) as address:

        def half_request() -> None:
            with socket.create_connection(address, timeout=5) as sock:
                sock.sendall(b"POST /healthcheck/fail HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")

        await anyio.to_thread.run_sync(half_request)
        assert (await get(address, "/")).status == 200


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async with serving(_server(idle_timeout=0.2)) as address:

        def idle() -> tuple[int, bytes, float]:
            with socket.create_connection(address, timeout=5) as sock:
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                first = sock.recv(65536)
                started = time.monotonic()
                rest = sock.recv(65536)  # blocks until the server closes
                return int(first.split(b" ")[1]), rest, time.monotonic() - started

        status, rest, waited = await anyio.to_thread.run_sync(idle)
    assert status == 503
    assert rest == b""
    assert 0.1 < waited < 3


async def test_a_failing_handler_is_a_500_and_the_server_keeps_serving() -> None:
    def broken(request: AdminRequest) -> AdminResponse:
        raise RuntimeError("boom")

    async with serving(_server(clusters=lambda: 1 / 0, extra_routes=[Route("/broken", broken, "fails")])) as address:
        broken_reply = await get(address, "/broken")
        clusters_reply = await get(address, "/clusters")
        assert (await get(address, "/")).status == 200
    assert broken_reply.status == 500
    assert "RuntimeError: boom" in broken_reply.body
    assert clusters_reply.status == 500


async def test_extra_routes_may_be_sync_or_async_and_see_the_request() -> None:
    def echo(request: AdminRequest) -> AdminResponse:
        return AdminResponse.json({"method": request.method, "q": request.param("q"), "body": request.body.decode()})

    async def later(request: AdminRequest) -> AdminResponse:
        await anyio.sleep(0.001)
        return AdminResponse(202, "accepted\n")

    routes = [
        Route("/echo", echo, "echo", frozenset({"GET", "POST"})),
        Route("/later", later, "async"),
    ]
    async with serving(_server(extra_routes=routes)) as address:
        echoed = await request(address, "POST", "/echo?q=1&q=2", body=b"hello")
        later_reply = await get(address, "/later")
        index = await get(address, "/")
    assert json.loads(echoed.body) == {"method": "POST", "q": "2", "body": "hello"}
    assert (later_reply.status, later_reply.body) == (202, "accepted\n")
    assert "/echo (GET/POST): echo" in index.body


def test_an_extra_route_cannot_replace_a_builtin_one() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        _server(extra_routes=[Route("/ready", lambda r: AdminResponse(), "mine")])


# -- with the proxy runtime ----------------------------------------------------------------------------------


async def test_the_proxy_admin_reports_live_clusters_config_and_draining() -> None:
    from meshproxy.proxy import Proxy  # the whole runtime; imported here so the tests above stand alone

    with socket.socket() as probe:  # a port nobody listens on: the cluster is never dialled here
        probe.bind(("127.0.0.1", 0))
        upstream_port = probe.getsockname()[1]
    config = config_from_dict(
        {
            "admin": {"address": "127.0.0.1:0"},
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": "tcp", "cluster": "backend"}],
            "clusters": [{"name": "backend", "hosts": [f"127.0.0.1:{upstream_port}"]}],
        }
    )
    async with Proxy(config) as proxy:
        assert proxy.admin_address is not None
        address = proxy.admin_address
        ready = await get(address, "/ready")
        clusters = await get(address, "/clusters")
        dump = json.loads((await get(address, "/config_dump")).body)
        await proxy.drain(0)
        draining = await get(address, "/ready")
    assert (ready.status, ready.body) == (200, "LIVE\n")
    assert f"backend::127.0.0.1:{upstream_port}::cx_active::0" in clusters.body.splitlines()
    assert dump["listeners"][0]["name"] == "edge"
    assert (draining.status, draining.body) == (503, "DRAINING\n")
