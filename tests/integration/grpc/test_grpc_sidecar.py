"""grpcio clients through the gRPC sidecar to a grpcio server: every call shape behaves as direct, and the
per-method counters equal what the workload did."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from meshproxy.config import grpc_sidecar_config
from meshproxy.proxy import ProxyThread
from testbeds.grpc.service import SERVICE, EchoServer
from testbeds.grpc.workload import BIG, CONCURRENT, STREAMED, UNICODE_MESSAGE, Ledger, run_workload

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with EchoServer() as running:
        yield running


@pytest.fixture
def sidecar(server: EchoServer) -> Iterator[ProxyThread]:
    config = grpc_sidecar_config(
        listen=("127.0.0.1", 0), upstream=("127.0.0.1", server.port), admin=("127.0.0.1", 0), stat_prefix="it"
    )
    with ProxyThread(config) as proxy:
        yield proxy


def stats(proxy: ProxyThread) -> dict[str, Any]:
    address = proxy.admin_address
    assert address is not None
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/stats?format=json") as response:
        data = json.loads(response.read())
    return {entry["name"]: entry["value"] for entry in data["stats"] if "value" in entry}


def counter(values: dict[str, Any], name: str) -> int:
    return int(values.get(name, 0))


def test_every_call_shape_behaves_as_direct(server: EchoServer, sidecar: ProxyThread) -> None:
    server.service.cancelled.clear()
    direct = run_workload(("127.0.0.1", server.port), server_saw_cancel=server.service.cancelled)
    server.service.cancelled.clear()
    proxied = run_workload(sidecar.listener_address("it"), server_saw_cancel=server.service.cancelled)
    assert proxied.results == direct.results
    results = proxied.results
    assert results["unary"] == (
        b"echo:hello",
        [("x-blob-bin", b"\x00\xff\x10"), ("x-request-id", "r-1")],
        [("x-trailer", "done")],
    )
    assert results["server_stream"] == (STREAMED, b"m0", b"m%d" % (STREAMED - 1))
    assert results["client_stream"] == b"50 5000"
    assert results["bidi"] == [b"pong:%d" % i for i in range(20)]
    assert results["big"] == (BIG + 5, b"echo:", b"b")
    assert len(results["concurrent"]) == CONCURRENT
    assert results["failure"] == (grpc.StatusCode.FAILED_PRECONDITION, UNICODE_MESSAGE)
    assert results["cancel"][1:] == (grpc.StatusCode.CANCELLED, True)  # the server saw the client's cancel
    assert results["deadline"] == (grpc.StatusCode.DEADLINE_EXCEEDED, True)
    assert results["health"] == 1  # SERVING


def test_per_method_counters_equal_the_workload(server: EchoServer, sidecar: ProxyThread) -> None:
    server.service.cancelled.clear()
    ledger: Ledger = run_workload(sidecar.listener_address("it"), server_saw_cancel=server.service.cancelled)
    values = stats(sidecar)
    for (service, method), expected in ledger.methods.items():
        scope = f"cluster.upstream.grpc.{service}.{method}."
        assert counter(values, scope + "total") == expected.calls, scope
        assert counter(values, scope + "request_message_count") == expected.request_messages, scope
        if method != "Wait":  # how many ticks the server sent before the cancel reached it is not known
            assert counter(values, scope + "response_message_count") == expected.response_messages, scope
        for code, calls in expected.statuses.items():
            assert counter(values, f"{scope}{code}") == calls, (scope, code)
        assert counter(values, scope + "success") == expected.statuses[0], scope
        assert counter(values, scope + "failure") == expected.calls - expected.statuses[0], scope
        assert counter(values, scope + "active") == 0, scope
    total = sum(m.calls for m in ledger.methods.values())
    assert counter(values, "grpc.it.downstream_rq_total") == total
    # A gRPC error is an error at the HTTP level too: FAILED_PRECONDITION 4xx, CANCELLED 4xx, DEADLINE 5xx.
    assert counter(values, "grpc.it.downstream_rq_4xx") == 2
    assert counter(values, "grpc.it.downstream_rq_5xx") == 1
    # The deadline: the proxy's answer (10 ms ahead of the client's timer) or the client's own reset, whichever
    # came first, is DEADLINE_EXCEEDED either way; which one won is timing, so it is not asserted here.
    assert counter(values, f"cluster.upstream.grpc.{SERVICE}.Sleep.4") == 1


def test_two_grpc_listeners_of_one_cluster_share_its_upstream_connection(server: EchoServer) -> None:
    """Calls from different listeners (and so different client connections) are streams of the cluster's one
    HTTP/2 connection, as in Envoy's per-cluster pool."""
    from meshproxy.config import config_from_dict

    config = config_from_dict(
        {
            "admin": None,
            "listeners": [
                {"name": name, "address": "127.0.0.1:0", "protocol": "grpc", "cluster": "echo"} for name in ("a", "b")
            ],
            "clusters": [{"name": "echo", "hosts": [["127.0.0.1", server.port]]}],
        }
    )
    with ProxyThread(config) as proxy:
        from testbeds.grpc.service import EchoClient

        for name in ("a", "b"):
            with EchoClient(proxy.listener_address(name)) as client:
                assert client.unary(name.encode(), timeout=10) == b"echo:" + name.encode()
        values = proxy.stats.values()
    assert values["cluster.echo.upstream_cx_total"] == 1
    assert values[f"cluster.echo.grpc.{SERVICE}.Unary.total"] == 2
