"""Raw HTTP/2 frames for the canned gRPC backend and the streaming load client.

Neither side needs an HTTP/2 library for what the benchmark does, and skipping one keeps both far faster
than the proxy under test. Header blocks are HPACK *literals without indexing* (or static-table indices):
they never touch the dynamic table, so one encoded block is valid on every stream of every connection.
Received header blocks are never decoded (the responder answers every stream alike), so the peer's dynamic
table does not need to be tracked either.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x3, 0x4
MAX_WINDOW = (1 << 31) - 1

_HEAD = struct.Struct(">BHBBI")  # 24-bit length as (high byte, low 16 bits), type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def parse_head(buf: bytes | bytearray, pos: int) -> tuple[int, int, int, int]:
    """(payload length, type, flags, stream id) of the frame header at ``pos``."""
    high, low, kind, flags, stream_id = _HEAD.unpack_from(buf, pos)
    return (high << 16) | low, kind, flags, stream_id & 0x7FFFFFFF


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def parse_settings(payload: bytes | bytearray) -> dict[int, int]:
    return {k: v for k, v in (struct.unpack_from(">HI", payload, i) for i in range(0, len(payload) - 5, 6))}


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (short strings only)."""
    assert len(name) < 127
    assert len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _literal_indexed_name(index: int, value: bytes) -> bytes:
    """HPACK literal without indexing whose name is static-table entry ``index`` (4-bit prefix)."""
    assert len(value) < 127
    head = bytes([index]) if index < 15 else bytes([0x0F, index - 15])
    return head + bytes([len(value)]) + value


GRPC_CONTENT_TYPE = b"application/grpc"

#: Response headers: ``:status: 200`` (static index 8) and ``content-type: application/grpc`` (name index 31).
RESPONSE_HEADERS_BLOCK = b"\x88" + _literal_indexed_name(31, GRPC_CONTENT_TYPE)
#: Trailers: ``grpc-status: 0``.
TRAILERS_BLOCK = _literal(b"grpc-status", b"0")


def request_headers_block(path: bytes, authority: bytes = b"127.0.0.1") -> bytes:
    """``POST`` (static 3), ``http`` (static 6), path (name 4), authority (name 1), content-type, te."""
    return (
        b"\x83\x86"
        + _literal_indexed_name(4, path)
        + _literal_indexed_name(1, authority)
        + _literal_indexed_name(31, GRPC_CONTENT_TYPE)
        + _literal(b"te", b"trailers")
    )


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


#: The canned reply message: a protobuf with field 1 = "ok" (what a tiny Echo reply looks like).
REPLY_MESSAGE = grpc_message(b"\x0a\x02ok")
#: The unary request body h2load sends: field 1 = "ping".
REQUEST_MESSAGE = grpc_message(b"\x0a\x04ping")
