"""The gRPC upstream pool balances per call: the host a retry picks, per-host requests in flight (what least
request reads), and the circuit breakers (``max_connections`` below the host count, ``max_pending_requests``)
with real grpcio servers behind a real proxy on 127.0.0.1."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshproxy.cluster import Cluster
from meshproxy.config import ClusterConfig, config_from_dict
from meshproxy.proxy import ProxyThread
from meshproxy.stats import StatsStore
from meshproxy.transport.h2_upstream import H2UpstreamPool
from testbeds.grpc.service import EchoClient, EchoServer, EchoService

HOSTS = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "random", "ring_hash", "maglev"])
async def test_a_retry_pick_avoids_the_host_that_failed_while_another_is_healthy(policy: str) -> None:
    cluster = Cluster.from_config(ClusterConfig(name="c", hosts=HOSTS, lb_policy=policy), StatsStore())
    pool = H2UpstreamPool(cluster)
    assert pool.cluster.hashes_keys == (policy in ("ring_hash", "maglev"))
    for index in range(50):
        key = b"/svc/Method%d" % index
        failed = pool.pick(key)
        assert pool.pick(key, avoid=failed) is not failed


async def test_a_retry_pick_keeps_the_failed_host_when_no_other_is_healthy() -> None:
    """Retrying the same host beats failing the call (panic mode off, so the balancer sees health)."""
    config = ClusterConfig(name="c", hosts=HOSTS, lb_policy="ring_hash", panic_threshold=0)
    cluster = Cluster.from_config(config, StatsStore())
    pool = H2UpstreamPool(cluster)
    only = cluster.hosts[1]
    for host in cluster.hosts:
        host.healthy = host is only
    cluster.refresh()
    assert pool.pick(b"k", avoid=only) is only


def front(ports: list[int], **cluster: Any) -> ProxyThread:
    return ProxyThread(
        config_from_dict(
            {
                "admin": None,
                "listeners": [{"name": "g", "address": "127.0.0.1:0", "protocol": "grpc", "cluster": "c"}],
                "clusters": [{"name": "c", "hosts": [f"127.0.0.1:{port}" for port in ports], **cluster}],
            }
        )
    )


@contextmanager
def servers(count: int) -> Iterator[list[EchoServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(EchoServer()) for _ in range(count)]


def test_each_host_counts_the_streams_in_flight_to_it() -> None:
    """``rq_active`` (least request's input) rises when a call's stream opens and falls when it ends."""
    with servers(2) as backends, front([s.port for s in backends]) as proxy:
        hosts = proxy.proxy.clusters["c"].hosts
        with EchoClient(proxy.listener_address("g")) as client:
            answer: list[bytes] = []
            caller = threading.Thread(target=lambda: answer.append(client.sleep(b"300", timeout=10)))
            caller.start()
            deadline = time.monotonic() + 10
            while sum(h.active_requests for h in hosts) != 1:
                assert time.monotonic() < deadline, "the call's stream was never counted"
                time.sleep(0.005)
            busy = next(h for h in hosts if h.active_requests == 1)
            assert busy.stats.rq_total.value == 1
            caller.join()
            assert answer == [b"awake"]
            client.unary(b"x", timeout=10)  # round robin: the other host
        assert [h.active_requests for h in hosts] == [0, 0]
        assert sorted(h.stats.rq_total.value for h in hosts) == [1, 1]


def test_max_connections_below_the_host_count_sends_calls_over_the_open_connection() -> None:
    """With one connection allowed for three hosts, calls picked for a host without a connection take the open
    one instead of failing; the refusals are counted in ``upstream_cx_overflow``."""
    with servers(3) as backends, front([s.port for s in backends], circuit_breakers={"max_connections": 1}) as proxy:
        with EchoClient(proxy.listener_address("g")) as client:
            for index in range(9):
                assert client.unary(b"%d" % index, timeout=10) == b"echo:%d" % index
        values = proxy.stats.values()
    assert values["cluster.c.upstream_cx_total"] == 1
    assert values["cluster.c.upstream_cx_overflow"] >= 1
    assert values["cluster.c.upstream_rq_total"] == 9


def test_a_call_that_would_wait_past_max_pending_requests_gets_unavailable() -> None:
    with servers(1) as backends, front([backends[0].port], circuit_breakers={"max_pending_requests": 0}) as proxy:
        with EchoClient(proxy.listener_address("g")) as client, pytest.raises(grpc.RpcError) as failure:
            client.unary(b"x", timeout=10)  # no connection yet: the call would have to wait for the dial
        values = proxy.stats.values()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "max_pending_requests" in (failure.value.details() or "")
    assert values["cluster.c.upstream_rq_pending_overflow"] == 1


@contextmanager
def one_stream_server() -> Iterator[tuple[EchoService, int]]:
    """A grpcio server with the test service that allows one stream per connection."""
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_concurrent_streams", 1)])
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, port
    finally:
        server.stop(None)


def test_past_max_connections_a_call_waits_for_room_on_a_full_connection_of_another_host() -> None:
    """One connection allowed, to a server that takes one stream at a time: a call picked for the other host
    (no connection, none allowed) waits for the busy connection's stream to end, then goes on it."""
    with (
        one_stream_server() as (service, port),
        servers(1) as other,
        front([port, other[0].port], circuit_breakers={"max_connections": 1}) as proxy,
    ):
        with EchoClient(proxy.listener_address("g")) as client:
            slow: list[bytes] = []
            caller = threading.Thread(target=lambda: slow.append(client.sleep(b"300", timeout=10)))
            caller.start()  # round robin: the first host, whose one stream it takes
            deadline = time.monotonic() + 10
            while not service.sleeping.is_set():
                assert time.monotonic() < deadline, "the slow call never reached the server"
                time.sleep(0.005)
            assert client.unary(b"x", timeout=10) == b"echo:x"  # picked the second host; waited, then ran
            caller.join()
        values = proxy.stats.values()
    assert slow == [b"awake"]
    assert values["cluster.c.upstream_cx_total"] == 1
    assert values["cluster.c.upstream_cx_overflow"] >= 1
    assert values[f"cluster.c.host.127.0.0.1:{port}.rq_total"] == 2


def test_a_host_discovery_removes_gets_no_more_calls_and_its_pooled_connection_closes(tmp_path: Path) -> None:
    """Edit the hosts file from two hosts to one: the next calls all go to the one left, and the pooled
    connection to the removed host is closed (GOAWAY, then closed once idle) instead of lingering."""
    hosts_file = tmp_path / "hosts.json"
    with servers(2) as (a, b):
        hosts_file.write_text(json.dumps([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]))
        source = {"hosts_file": {"path": str(hosts_file), "refresh_interval": "20ms"}}
        config = config_from_dict(
            {
                "admin": None,
                "listeners": [{"name": "g", "address": "127.0.0.1:0", "protocol": "grpc", "cluster": "c"}],
                "clusters": [{"name": "c", **source}],
            }
        )
        with ProxyThread(config) as proxy, EchoClient(proxy.listener_address("g")) as client:
            cluster = proxy.proxy.clusters["c"]
            deadline = time.monotonic() + 10
            while len(cluster.hosts) != 2:
                assert time.monotonic() < deadline, "the hosts file was never read"
                time.sleep(0.01)
            gone = next(h for h in cluster.hosts if h.address[1] == a.port)
            for _ in range(4):
                client.unary(b"x", timeout=10)
            assert gone.stats.cx_active.value == 1
            scratch = hosts_file.with_suffix(".tmp")
            scratch.write_text(json.dumps([f"127.0.0.1:{b.port}"]))
            os.replace(scratch, hosts_file)
            while [h.address[1] for h in cluster.hosts] != [b.port]:
                assert time.monotonic() < deadline + 10, "the edit was never applied"
                time.sleep(0.01)
            calls_on_gone = gone.stats.rq_total.value
            for _ in range(4):
                assert client.unary(b"y", timeout=10) == b"echo:y"
            while gone.stats.cx_active.value != 0:
                assert time.monotonic() < deadline + 20, "the removed host's connection stayed open"
                time.sleep(0.01)
            assert gone.stats.rq_total.value == calls_on_gone
