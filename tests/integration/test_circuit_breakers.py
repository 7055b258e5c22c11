"""Circuit breakers: past a cluster's limits the proxy answers with each protocol's own overload error, counted
in ``cluster.<name>.upstream_*_overflow``, and never sends the request upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from pymongo.errors import OperationFailure

from meshproxy.config import config_from_dict
from meshproxy.proxy import Proxy, ProxyThread
from testbeds.grpc.service import EchoClient, EchoServer

from .support import client_for

pytestmark = pytest.mark.integration


def config(protocol: str, upstream: tuple[str, int], **breakers: Any) -> Any:
    return config_from_dict(
        {
            "admin": None,
            "listeners": [{"name": "edge", "address": "127.0.0.1:0", "protocol": protocol, "cluster": "up"}],
            "clusters": [{"name": "up", "hosts": [list(upstream)], "circuit_breakers": breakers}],
        }
    )


async def test_dynamodb_requests_past_max_requests_get_a_503_from_the_proxy() -> None:
    async with Proxy(config("dynamo", ("127.0.0.1", 1), max_requests=0)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        stats = proxy.stats.values()
    assert head.startswith(b"HTTP/1.1 503 ")
    assert stats["cluster.up.upstream_rq_overflow"] == 1
    assert stats["cluster.up.upstream_cx_total"] == 0


def test_grpc_calls_past_max_requests_get_unavailable_from_the_proxy() -> None:
    with EchoServer() as server, ProxyThread(config("grpc", ("127.0.0.1", server.port), max_requests=0)) as proxy:
        with EchoClient(proxy.listener_address("edge")) as client, pytest.raises(grpc.RpcError) as failure:
            client.unary(b"x", timeout=5)
        stats = proxy.stats.values()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit breaker" in (failure.value.details() or "")
    assert stats["cluster.up.upstream_rq_overflow"] == 1


def test_mongo_operations_past_max_requests_get_host_unreachable_while_handshakes_pass(
    secantus: tuple[str, int],
) -> None:
    with ProxyThread(config("mongo", secantus, max_requests=0)) as proxy:
        client = client_for(proxy.listener_address("edge"), retryReads=False, retryWrites=False)
        try:
            with pytest.raises(OperationFailure) as failure:
                client["shop"]["breakers"].find_one({})
        finally:
            client.close()
        stats = proxy.stats.values()
    assert failure.value.code == 6  # HostUnreachable: a network-class error drivers know how to handle
    assert stats["cluster.up.upstream_rq_overflow"] >= 1


async def test_connections_past_max_connections_are_closed_and_counted() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    upstream = ("127.0.0.1", server.sockets[0].getsockname()[1])
    async with server, Proxy(config("tcp", upstream, max_connections=1)) as proxy:
        first = await asyncio.open_connection(*proxy.listener_address("edge"))
        async with asyncio.timeout(5):  # until the first upstream connection is up
            while proxy.stats.values()["cluster.up.upstream_cx_active"] < 1:  # noqa: ASYNC110 - state is polled
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
        writer.close()
        first[1].close()
        assert proxy.stats.values()["cluster.up.upstream_cx_overflow"] == 1
