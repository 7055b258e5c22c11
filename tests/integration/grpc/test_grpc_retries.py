"""Retries: a call that fails UNAVAILABLE before anything reached the client is tried again, whether the
status came in a trailers-only response or in trailers after response headers (Envoy retries only the
former), within ``max_retries`` and the listener's retry budget."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from meshproxy.config import grpc_sidecar_config
from meshproxy.proxy import ProxyThread
from testbeds.grpc.service import EchoClient, EchoServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with EchoServer() as running:
        yield running


def sidecar(server: EchoServer, **retry: Any) -> ProxyThread:
    config = grpc_sidecar_config(
        listen=("127.0.0.1", 0), upstream=("127.0.0.1", server.port), admin=("127.0.0.1", 0), stat_prefix="rt",
        retry={"on": ["UNAVAILABLE"], "max_retries": 2, "backoff": "1ms", **retry},
    )
    return ProxyThread(config)


def stats(proxy: ProxyThread) -> dict[str, Any]:
    address = proxy.admin_address
    assert address is not None
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/stats?format=json") as response:
        return {e["name"]: e["value"] for e in json.loads(response.read())["stats"] if "value" in e}


@pytest.mark.parametrize("where", ["headers", "trailers"])
def test_unavailable_before_any_message_is_retried_until_it_succeeds(server: EchoServer, where: str) -> None:
    with sidecar(server) as proxy, EchoClient(proxy.listener_address("rt")) as client:
        answer, _ = client.flaky.with_call(f"ok-after-2-{where} 2 {where}".encode(), timeout=10)
        values = stats(proxy)
    assert answer == b"ok:3"  # the third attempt, the client never saw the first two
    assert values["cluster.upstream.upstream_rq_retry"] == 2
    assert values["cluster.upstream.upstream_rq_retry_success"] == 1
    assert values["cluster.upstream.grpc.meshproxy.test.Echo.Flaky.0"] == 1  # one call, as the client saw it


def test_a_call_still_failing_after_max_retries_reports_the_last_status(server: EchoServer) -> None:
    with sidecar(server) as proxy, EchoClient(proxy.listener_address("rt")) as client:
        with pytest.raises(grpc.RpcError) as failure:
            client.flaky(b"always-trailers 99 trailers", timeout=10)
        values = stats(proxy)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "attempt 3 fails"
    assert values["cluster.upstream.upstream_rq_retry"] == 2
    assert values["cluster.upstream.upstream_rq_retry_limit_exceeded"] == 1
    assert server.service.attempts["always-trailers"] == 3


def test_statuses_not_configured_are_not_retried(server: EchoServer) -> None:
    with sidecar(server, on=["RESOURCE_EXHAUSTED"]) as proxy, EchoClient(proxy.listener_address("rt")) as client:
        with pytest.raises(grpc.RpcError) as failure:
            client.flaky(b"not-retried 1 headers", timeout=10)
        values = stats(proxy)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert values["cluster.upstream.upstream_rq_retry"] == 0
    assert server.service.attempts["not-retried"] == 1


def test_the_budget_refuses_retries_beyond_its_share(server: EchoServer) -> None:
    """With no minimum and a 0 % budget, no retry may be in flight: the failure is passed on, counted."""
    with sidecar(server, budget_percent=0, min_retry_concurrency=0) as proxy:
        with EchoClient(proxy.listener_address("rt")) as client, pytest.raises(grpc.RpcError):
            client.flaky(b"over-budget 1 headers", timeout=10)
        values = stats(proxy)
    assert values["cluster.upstream.upstream_rq_retry_overflow"] == 1
    assert values["cluster.upstream.upstream_rq_retry"] == 0
