"""HTTP/2 frame boundaries in a byte stream, for what h2 should not see: GOAWAY.

h2 treats a GOAWAY, sent or received, as the end of the connection: its state machine moves to CLOSED and
refuses every later frame, although RFC 9113 6.8 lets the streams at or below the GOAWAY's last stream id
run to completion — which is what graceful shutdown is for (a draining proxy, a server restarting). So the
proxy takes GOAWAY frames out of each inbound stream before h2 sees it (``GoawaySplitter``), handles them
itself, and writes its own GOAWAY frames (``goaway_frame``) without telling h2.

The splitter reads only frame headers: everything else passes through as the same bytes, in the same
order, to h2, which still checks every frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshproxy.codecs.errors import DecodeError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
GOAWAY = 0x7
MAX_GOAWAY_PAYLOAD = 16384
"""A GOAWAY is 8 bytes plus optional debug data; more than the smallest frame size allowed is refused."""


@dataclass(slots=True, frozen=True)
class Goaway:
    last_stream_id: int
    error_code: int
    debug_data: bytes


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY frame on stream 0."""
    header = struct.pack(">I", 8)[1:] + bytes((GOAWAY, 0)) + struct.pack(">I", 0)
    return header + struct.pack(">II", last_stream_id & 0x7FFFFFFF, error_code)


class GoawaySplitter:
    """``feed(data) -> (bytes for h2, [Goaway])`` over one direction of one connection."""

    __slots__ = ("_pending", "_preface", "_remaining")

    def __init__(self, *, expect_preface: bool) -> None:
        self._preface = len(PREFACE) if expect_preface else 0
        """Bytes of the client preface still to pass before the first frame (server side only)."""
        self._remaining = 0
        """Bytes of the current (non-GOAWAY) frame still to pass through."""
        self._pending = b""
        """A frame header, or a whole GOAWAY frame, received in part (at most 9 + 16384 bytes)."""

    def feed(self, data: bytes) -> tuple[bytes, list[Goaway]]:
        if self._pending:
            data, self._pending = self._pending + data, b""
        out: list[bytes] = []
        goaways: list[Goaway] = []
        pos, size = 0, len(data)
        if self._preface:
            pos = min(self._preface, size)
            out.append(data[:pos])
            self._preface -= pos
        while pos < size:
            remaining = self._remaining
            if remaining:
                step = min(remaining, size - pos)
                out.append(data[pos : pos + step])
                self._remaining = remaining - step
                pos += step
                continue
            if size - pos < FRAME_HEADER:
                self._pending = data[pos:]
                break
            length = int.from_bytes(data[pos : pos + 3], "big")
            if data[pos + 3] != GOAWAY:
                out.append(data[pos : pos + FRAME_HEADER])
                pos += FRAME_HEADER
                self._remaining = length
                continue
            if length < 8 or length > MAX_GOAWAY_PAYLOAD:
                raise DecodeError("bad_goaway", f"a GOAWAY frame of {length} bytes")
            if size - pos < FRAME_HEADER + length:
                self._pending = data[pos:]
                break
            body = data[pos + FRAME_HEADER : pos + FRAME_HEADER + length]
            pos += FRAME_HEADER + length
            last_stream_id, error_code = struct.unpack_from(">II", body)
            goaways.append(Goaway(last_stream_id & 0x7FFFFFFF, error_code, bytes(body[8:])))
        if len(out) == 1:
            return out[0], goaways
        return b"".join(out), goaways
