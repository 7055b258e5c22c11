"""The relay underneath every protocol: bytes, half-close, backpressure, failures, timeouts, drain."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from meshproxy.config import config_from_dict
from meshproxy.proxy import Proxy

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the whole request until the client half-closes, then answers and closes."""
    request = await reader.read()
    writer.write(b"got " + str(len(request)).encode())
    await writer.drain()
    writer.close()


async def _never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def _start_upstream(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _config(upstream_port: int, **listener: Any) -> Any:
    connect_timeout = listener.pop("connect_timeout", 2.0)
    return config_from_dict(
        {
            "admin": None,
            "drain_timeout": listener.pop("drain_timeout", 2.0),
            "listeners": [
                {
                    "name": "edge",
                    "address": "127.0.0.1:0",
                    "protocol": listener.pop("protocol", "tcp"),
                    "cluster": "backend",
                    **listener,
                }
            ],
            "clusters": [
                {"name": "backend", "hosts": [f"127.0.0.1:{upstream_port}"],
                 "connect_timeout": connect_timeout},
            ],
        }
    )


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server, port = await _start_upstream(_echo)
    async with server:
        yield port


async def test_tcp_listener_relays_bytes_both_ways_unchanged(echo_port: int) -> None:
    async with Proxy(_config(echo_port)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        payload = bytes(range(256)) * 400
        writer.write(payload)
        received = await reader.readexactly(len(payload))
        assert received == payload
        writer.close()
        stats = proxy.stats.values()
        assert stats["listener.edge.downstream_cx_total"] == 1
        assert stats["cluster.backend.upstream_cx_total"] == 1
        assert stats["cluster.backend.upstream_cx_tx_bytes_total"] == len(payload)


async def test_client_half_close_reaches_upstream_and_the_answer_still_comes_back() -> None:
    server, port = await _start_upstream(_answer_after_eof)
    async with server, Proxy(_config(port)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        writer.write(b"x" * 1000)
        writer.write_eof()
        assert await reader.read() == b"got 1000"
        writer.close()


async def test_unreachable_upstream_closes_the_client_and_counts_a_connect_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    async with Proxy(_config(dead_port)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert proxy.stats.values()["cluster.backend.upstream_cx_connect_fail"] == 1


async def test_connect_timeout_is_counted_and_closes_the_client(echo_port: int) -> None:
    async with Proxy(_config(echo_port, connect_timeout=1e-9)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        stats = proxy.stats.values()
        assert stats["cluster.backend.upstream_cx_connect_timeout"] == 1
        assert stats["cluster.backend.upstream_cx_connect_fail"] == 1


async def test_a_silent_connection_is_closed_after_the_idle_timeout(echo_port: int) -> None:
    async with Proxy(_config(echo_port, idle_timeout=0.2)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        assert proxy.stats.values()["listener.edge.downstream_cx_idle_timeout"] == 1


async def test_a_busy_connection_outlives_the_idle_timeout(echo_port: int) -> None:
    async with Proxy(_config(echo_port, idle_timeout=0.2)) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        for _ in range(8):  # 0.8 s of traffic, four idle periods
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await asyncio.sleep(0.1)
        assert proxy.stats.values()["listener.edge.downstream_cx_idle_timeout"] == 0
        writer.close()


async def test_a_reader_that_never_reads_does_not_make_the_proxy_buffer_without_bound() -> None:
    server, port = await _start_upstream(_never_read)
    async with server, Proxy(_config(port)) as proxy:
        sock = socket.socket()
        sock.connect(proxy.listener_address("edge"))
        sock.setblocking(False)
        sent = 0
        chunk = b"z" * 65536
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while loop.time() < deadline:  # push until every buffer on the way is full
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
        listener = proxy.listeners["edge"]
        (session,) = listener.sessions
        assert session.up_transport is not None
        buffered_in_proxy = session.up_transport.get_write_buffer_size()
        # The kernel buffers take most of what was sent; the proxy holds at most about one read's worth
        # beyond its transport's high-water mark, never the whole stream.
        assert sent > 4 << 20
        assert buffered_in_proxy < 2 << 20
        sock.close()


async def test_drain_closes_idle_connections_and_refuses_new_ones(echo_port: int) -> None:
    proxy = Proxy(_config(echo_port))
    async with proxy:
        address = proxy.listener_address("edge")
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        await proxy.drain(timeout=1)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        writer.close()


async def test_auto_listener_relays_bytes_no_codec_claims_as_plain_tcp(echo_port: int) -> None:
    async with Proxy(_config(echo_port, protocol="auto")) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4  # a TLS record, say
        writer.write(data)
        assert await reader.readexactly(len(data)) == data
        writer.close()
        assert proxy.stats.values()["listener.edge.protocol.tcp"] == 1


async def test_auto_listener_proxies_http_as_dynamodb_with_its_stats() -> None:
    """HTTP sniffed on an ``auto`` listener gets the DynamoDB session (default filters: stats), so a response
    from an HTTP server comes back framed and counted."""

    async def http_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    server, port = await _start_upstream(http_server)
    async with server, Proxy(_config(port, protocol="auto")) as proxy:
        reader, writer = await asyncio.open_connection(*proxy.listener_address("edge"))
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: DynamoDB_20120810.ListTables\r\n\r\n")
        assert await reader.readuntil(b"{}") == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        writer.close()
        stats = proxy.stats.values()
        assert stats["listener.edge.protocol.http1"] == 1
        assert stats["dynamodb.edge.operation.ListTables.upstream_rq_total_200"] == 1
