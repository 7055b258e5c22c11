"""HTTP/2 abuse against the gRPC listener: each attack is a client written here with h2's frame library,
run while a well-behaved grpcio client keeps calling. The proxy must defend (GOAWAY, refusal, or
backpressure), count the defence under ``http2.<prefix>.``, hold bounded memory, and keep serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from meshproxy.config import grpc_sidecar_config
from meshproxy.proxy import Proxy
from meshproxy.transport.grpc_session import GrpcSession
from testbeds.grpc.service import SERVICE, EchoClient, EchoServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with EchoServer() as running:
        yield running


def proxy_for(server: EchoServer) -> Proxy:
    """The gRPC sidecar with low flood budgets and at most 10 streams per connection."""
    config = grpc_sidecar_config(
        listen=("127.0.0.1", 0), upstream=("127.0.0.1", server.port), admin=None, stat_prefix="edge",
        max_concurrent_streams=10, max_resets_per_second=50, max_pings_per_second=50, max_settings_per_second=50,
    )
    return Proxy(config)


class Attacker:
    """A raw HTTP/2 client: sends whatever frames it is told, and reads what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = Encoder()
        self.received = b""

    @classmethod
    async def connect(cls, address: tuple[str, int], *, settings: dict[int, int] | None = None) -> Attacker:
        attacker = cls(*await asyncio.open_connection(*address))
        frame = SettingsFrame(0)
        frame.settings = settings or {}
        attacker.writer.write(PREFACE + frame.serialize())
        return attacker

    def headers_block(self, path: str = f"/{SERVICE}/Unary", extra: list[tuple[str, str]] | None = None) -> bytes:
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "edge"),
            ("content-type", "application/grpc"), ("te", "trailers"), *(extra or []),
        ]  # fmt: skip
        return bytes(self.encoder.encode(headers))

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(frame.serialize() for frame in frames))

    async def goaway(self, timeout: float = 5) -> int | None:
        """Read until the proxy's GOAWAY (its error code) or the close (None)."""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    self.received += chunk
        except (ConnectionError, TimeoutError):
            pass
        pos = 0
        data = self.received
        while pos + 9 <= len(data):
            frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
            body = data[pos + 9 : pos + 9 + length]
            if isinstance(frame, GoAwayFrame) and len(body) >= 8:
                frame.parse_body(memoryview(body))
                return int(frame.error_code)
            pos += 9 + length
        return None

    def close(self) -> None:
        self.writer.close()


async def good_calls(address: tuple[str, int], n: int = 5) -> list[bytes]:
    def work() -> list[bytes]:
        with EchoClient(address) as client:
            return [client.unary(b"%d" % i, timeout=10) for i in range(n)]

    return await asyncio.to_thread(work)


def stat(proxy: Proxy, name: str) -> Any:
    return proxy.stats.values().get(name, 0)


ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
COMPRESSION_ERROR = 0x9


async def test_rapid_reset_gets_goaway_enhance_your_calm(server: EchoServer) -> None:
    async with proxy_for(server) as proxy:
        address = proxy.listener_address("edge")
        attacker = await Attacker.connect(address)
        for stream_id in range(1, 400, 2):
            attacker.send(HeadersFrame(stream_id, data=attacker.headers_block(), flags=["END_HEADERS"]),
                          RstStreamFrame(stream_id, error_code=8))
        good = asyncio.create_task(good_calls(address))
        assert await attacker.goaway() == ENHANCE_YOUR_CALM
        assert await good == [b"echo:%d" % i for i in range(5)]
        attacker.close()
        assert stat(proxy, "http2.edge.rx_reset_flood") == 1
        assert stat(proxy, "http2.edge.rx_reset") > 50


async def test_ping_flood_gets_goaway(server: EchoServer) -> None:
    async with proxy_for(server) as proxy:
        attacker = await Attacker.connect(proxy.listener_address("edge"))
        attacker.send(*(PingFrame(0, opaque_data=b"%08d" % i) for i in range(300)))
        assert await attacker.goaway() == ENHANCE_YOUR_CALM
        assert stat(proxy, "http2.edge.ping_flood") == 1
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]


async def test_settings_flood_gets_goaway(server: EchoServer) -> None:
    async with proxy_for(server) as proxy:
        attacker = await Attacker.connect(proxy.listener_address("edge"))
        attacker.send(*(SettingsFrame(0) for _ in range(300)))
        assert await attacker.goaway() == ENHANCE_YOUR_CALM
        assert stat(proxy, "http2.edge.settings_flood") == 1
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]


async def test_continuation_flood_ends_the_connection_bounded(server: EchoServer) -> None:
    """A header block that never ends: h2 buffers at most 64 CONTINUATION frames, then it is an error."""
    async with proxy_for(server) as proxy:
        attacker = await Attacker.connect(proxy.listener_address("edge"))
        attacker.send(HeadersFrame(1, data=attacker.headers_block()))
        attacker.send(*(ContinuationFrame(1, data=b"\x00" * 1000) for _ in range(200)))
        assert await attacker.goaway() == PROTOCOL_ERROR
        assert stat(proxy, "http2.edge.too_many_header_frames") == 1
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]


async def test_an_oversized_header_list_ends_the_connection(server: EchoServer) -> None:
    async with proxy_for(server) as proxy:
        attacker = await Attacker.connect(proxy.listener_address("edge"))
        block = attacker.headers_block(extra=[(f"x-pad-{i}", "v" * 1000) for i in range(100)])  # ~100 KiB
        frames: list[Frame] = [HeadersFrame(1, data=block[:16000])]
        for offset in range(16000, len(block), 16000):
            last = offset + 16000 >= len(block)
            flags = ["END_HEADERS"] if last else []
            frames.append(ContinuationFrame(1, data=block[offset : offset + 16000], flags=flags))
        attacker.send(*frames)
        assert await attacker.goaway() in (COMPRESSION_ERROR, PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
        assert stat(proxy, "http2.edge.header_overflow") == 1
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]


async def test_streams_beyond_the_limit_are_refused(server: EchoServer) -> None:
    async with proxy_for(server) as proxy:
        attacker = await Attacker.connect(proxy.listener_address("edge"))
        path = f"/{SERVICE}/Wait"  # streams until cancelled: each stays open
        block = attacker.headers_block(path)
        attacker.send(*(HeadersFrame(s, data=block, flags=["END_HEADERS"]) for s in range(1, 41, 2)))
        assert await attacker.goaway() == PROTOCOL_ERROR
        assert stat(proxy, "http2.edge.too_many_streams") == 1
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]


async def test_a_client_that_never_opens_its_window_stalls_its_stream_not_the_proxy(server: EchoServer) -> None:
    """Window-update stall: the client asks for a large stream with a zero receive window. The proxy holds
    at most what it let the server send (its own window per upstream stream), and serves others meanwhile."""
    async with proxy_for(server) as proxy:
        no_window = {SettingsFrame.INITIAL_WINDOW_SIZE: 0}
        attacker = await Attacker.connect(proxy.listener_address("edge"), settings=no_window)
        block = attacker.headers_block(f"/{SERVICE}/Count")
        message = b"\x00\x00\x00\x00\x07" + b"1000000"
        attacker.send(
            HeadersFrame(1, data=block, flags=["END_HEADERS"]), DataFrame(1, data=message, flags=["END_STREAM"])
        )
        def held() -> int:
            sessions = [s for s in proxy.listeners["edge"].sessions if isinstance(s, GrpcSession)]
            return sum(len(data) for s in sessions for call in s.calls.values() for data, _ in call.to_client)

        async with asyncio.timeout(10):  # the server streams as fast as the proxy's window to it allows
            while held() < 256 << 10:  # noqa: ASYNC110 - no event to await: the proxy's state is polled
                await asyncio.sleep(0.05)
        assert await good_calls(proxy.listener_address("edge")) == [b"echo:%d" % i for i in range(5)]
        assert held() <= 1 << 20  # bounded by the 1 MiB the proxy lets one upstream stream send ahead
        assert stat(proxy, "http2.edge.flow_control_wait") >= 1
        attacker.send(WindowUpdateFrame(0, window_increment=1))  # still alive, just slow
        attacker.close()
