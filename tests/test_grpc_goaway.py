"""GOAWAY both ways and PING: a draining proxy lets open calls finish and tells clients to go; a server that
says GOAWAY lets its open calls finish, takes no new streams, and the proxy goes elsewhere (or answers
UNAVAILABLE); PING is answered by the proxy on each connection."""

from __future__ import annotations

import asyncio

import grpc
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, SettingsFrame

from meshproxy.config import grpc_sidecar_config
from meshproxy.proxy import Proxy
from testbeds.grpc.service import EchoClient, EchoServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _proxy(port: int) -> Proxy:
    return Proxy(
        grpc_sidecar_config(listen=("127.0.0.1", 0), upstream=("127.0.0.1", port), admin=None, stat_prefix="g")
    )


def _frames(data: bytes) -> list[Frame]:
    frames, pos = [], 0
    while pos + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        if pos + 9 + length > len(data):
            break
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


async def test_a_ping_is_answered_by_the_proxy() -> None:
    with EchoServer() as server:
        async with _proxy(server.port) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listener_address("g"))
            writer.write(PREFACE + SettingsFrame(0).serialize() + PingFrame(0, opaque_data=b"12345678").serialize())
            received = b""
            async with asyncio.timeout(5):
                while not any(isinstance(f, PingFrame) and "ACK" in f.flags for f in _frames(received)):
                    received += await reader.read(65536)
            ack = next(f for f in _frames(received) if isinstance(f, PingFrame) and "ACK" in f.flags)
            assert ack.opaque_data == b"12345678"
            writer.close()


async def test_drain_lets_the_open_call_finish_and_sends_goaway() -> None:
    with EchoServer() as server:
        async with _proxy(server.port) as proxy:
            address = proxy.listener_address("g")
            with EchoClient(address) as client:
                slow = asyncio.create_task(asyncio.to_thread(client.sleep, b"400", timeout=10))
                assert await asyncio.to_thread(server.service.sleeping.wait, 10)  # the call is open at the server
                reader, writer = await asyncio.open_connection(*address)  # a second, idle client
                writer.write(PREFACE + SettingsFrame(0).serialize())
                await proxy.drain(timeout=5)
                assert await slow == b"awake"
                received = await asyncio.wait_for(reader.read(), 5)
                assert any(isinstance(f, GoAwayFrame) for f in _frames(received))
                writer.close()


async def test_a_server_goaway_lets_open_calls_finish_then_new_calls_fail_unavailable() -> None:
    server = EchoServer()
    server.__enter__()
    try:
        async with _proxy(server.port) as proxy:
            with EchoClient(proxy.listener_address("g")) as client:
                assert await asyncio.to_thread(client.unary, b"warm", timeout=5) == b"echo:warm"
                slow = asyncio.create_task(asyncio.to_thread(client.sleep, b"300", timeout=10))
                assert await asyncio.to_thread(server.service.sleeping.wait, 10)  # the call is open at the server
                stopping = server.server.stop(grace=5)  # GOAWAY, open calls may finish
                assert await slow == b"awake"
                await asyncio.to_thread(stopping.wait, 5)
                try:
                    await asyncio.to_thread(client.unary, b"late", timeout=5)
                    status = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    status = error.code()
                assert status == grpc.StatusCode.UNAVAILABLE
            stats = proxy.stats.values()
            assert stats["cluster.upstream.upstream_cx_goaway"] >= 1
    finally:
        server.__exit__(None, None, None)


async def test_the_proxy_answers_deadline_exceeded_when_grpc_timeout_passes() -> None:
    """A client that sends ``grpc-timeout: 200m`` but keeps no timer of its own (written here with h2) gets a
    trailers-only DEADLINE_EXCEEDED from the proxy, and the upstream call is cancelled."""
    import h2.config
    import h2.connection
    import h2.events

    with EchoServer() as server:
        async with _proxy(server.port) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.listener_address("g"))
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            client.initiate_connection()
            headers = [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/meshproxy.test.Echo/Sleep"),
                (b":authority", b"g"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                (b"grpc-timeout", b"200m"),
            ]  # fmt: skip
            client.send_headers(1, headers)
            client.send_data(1, b"\x00\x00\x00\x00\x042000", end_stream=True)
            writer.write(client.data_to_send())
            ended: list[h2.events.Event] = []
            async with asyncio.timeout(5):
                while not any(isinstance(e, h2.events.StreamEnded) for e in ended):
                    ended += client.receive_data(await reader.read(65536))
                    writer.write(client.data_to_send())
            response = next(e for e in ended if isinstance(e, h2.events.ResponseReceived))
            assert (b"grpc-status", b"4") in response.headers
            writer.close()
            stats = proxy.stats.values()
            assert stats["http2.g.deadline_exceeded"] == 1
            assert stats["cluster.upstream.grpc.meshproxy.test.Echo.Sleep.local"] == 1
            assert stats["cluster.upstream.grpc.meshproxy.test.Echo.Sleep.4"] == 1
