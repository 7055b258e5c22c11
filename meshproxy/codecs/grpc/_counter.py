"""Counting gRPC messages as DATA streams by, without keeping them: the proxy's per-frame fast path.

A proxy that forwards DATA unchanged needs the number of messages each way (for stats) but not the messages,
so ``GrpcMessageCounter`` reads only each 5-byte prefix (which may be split across frames) and skips the
declared number of bytes. Nothing is buffered but a split prefix (at most 4 bytes), whatever the
declared sizes, so a 4 MiB message costs as little as a 4-byte one.
"""

from __future__ import annotations

from meshproxy.codecs.grpc._framing import PREFIX_SIZE


class GrpcMessageCounter:
    """``feed(data)`` for every DATA payload of one direction of one stream; ``count`` messages started."""

    __slots__ = ("count", "prefix", "remaining")

    def __init__(self) -> None:
        self.count = 0
        self.remaining = 0
        """Bytes of the current message still to come."""
        self.prefix = b""
        """The part of a split prefix received so far."""

    def feed(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        while pos < size:
            if self.remaining:
                step = min(self.remaining, size - pos)
                self.remaining -= step
                pos += step
                continue
            if self.prefix or size - pos < PREFIX_SIZE:
                need = PREFIX_SIZE - len(self.prefix)
                self.prefix += data[pos : pos + need]
                pos += need
                if len(self.prefix) < PREFIX_SIZE:
                    return
                header, self.prefix = self.prefix, b""
            else:
                header = data[pos : pos + PREFIX_SIZE]
                pos += PREFIX_SIZE
            self.count += 1
            self.remaining = int.from_bytes(header[1:PREFIX_SIZE], "big")
