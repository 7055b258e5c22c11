"""A canned gRPC server over h2c that is never the bottleneck: every stream gets the same unary answer.

For every stream the client ends (``END_STREAM`` on HEADERS or DATA) it writes response HEADERS
(``:status 200``, ``content-type: application/grpc``), one DATA frame with one small length-prefixed
message, and trailers ``grpc-status: 0``: the shape of a successful unary (or client-streaming) call. The
frames are precomputed (``benchmarks.grpc.wire``: HPACK literals without indexing, valid on any
connection), so one answer is a join with the stream id patched in; request DATA is only counted for the
connection window. Advertised windows are 2^31-1 and the connection window is topped up, so the server
never stalls a client.

``python -m benchmarks.grpc.backend --port 0`` prints ``LISTENING <port>`` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import cast

from benchmarks.backend import serve_main
from benchmarks.grpc import wire

_HEAD = struct.Struct(">BHBBI")
_ID = struct.Struct(">I")

_HEADERS_HEAD = wire.frame(wire.HEADERS, wire.END_HEADERS, 0, wire.RESPONSE_HEADERS_BLOCK)[:5]
_DATA_HEAD = wire.frame(wire.DATA, 0, 0, wire.REPLY_MESSAGE)[:5]
_TRAILERS_HEAD = wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, 0, wire.TRAILERS_BLOCK)[:5]
_HELLO = wire.settings(
    (wire.SETTINGS_MAX_CONCURRENT_STREAMS, 100_000), (wire.SETTINGS_INITIAL_WINDOW_SIZE, wire.MAX_WINDOW)
) + wire.window_update(0, wire.MAX_WINDOW - 65535)
_REFILL_AT = 1 << 30


def answer(stream_id: int) -> bytes:
    sid = _ID.pack(stream_id)
    return b"".join(
        (
            _HEADERS_HEAD,
            sid,
            wire.RESPONSE_HEADERS_BLOCK,
            _DATA_HEAD,
            sid,
            wire.REPLY_MESSAGE,
            _TRAILERS_HEAD,
            sid,
            wire.TRAILERS_BLOCK,
        )
    )


class CannedGrpcServer(asyncio.Protocol):
    __slots__ = ("_buf", "_consumed", "_preface", "_transport")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._preface = False
        self._consumed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(_HELLO)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        if not self._preface:
            if len(buf) < len(wire.PREFACE):
                self._buf = buf
                return
            if not buf.startswith(wire.PREFACE):
                assert self._transport is not None
                self._transport.close()
                return
            self._preface = True
            pos = len(wire.PREFACE)
        out: list[bytes] = []
        end = len(buf)
        unpack = _HEAD.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(buf, pos)
            size = (high << 16) | low
            if end - pos - 9 < size:
                break
            if kind == wire.DATA:
                self._consumed += size
                if flags & wire.END_STREAM:
                    out.append(answer(stream_id & 0x7FFFFFFF))
            elif kind == wire.HEADERS:
                if flags & wire.END_STREAM:
                    out.append(answer(stream_id & 0x7FFFFFFF))
            elif kind == wire.SETTINGS:
                if not flags & wire.ACK:
                    out.append(wire.frame(wire.SETTINGS, wire.ACK, 0))
            elif kind == wire.PING:
                if not flags & wire.ACK:
                    out.append(wire.frame(wire.PING, wire.ACK, 0, bytes(buf[pos + 9 : pos + 17])))
            elif kind == wire.GOAWAY:
                assert self._transport is not None
                self._transport.close()
                return
            pos += 9 + size
        self._buf = buf[pos:] if pos < end else b""
        if self._consumed >= _REFILL_AT:
            out.append(wire.window_update(0, self._consumed))
            self._consumed = 0
        if out:
            assert self._transport is not None
            self._transport.write(b"".join(out))


def main(argv: list[str] | None = None) -> int:
    return serve_main(argv, "python -m benchmarks.grpc.backend", __doc__.split("\n")[0], CannedGrpcServer)


if __name__ == "__main__":
    sys.exit(main())
