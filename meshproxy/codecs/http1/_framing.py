"""Where an HTTP/1.1 body ends (RFC 9112 6.3), decided strictly enough that no two readers can disagree.

Request smuggling lives in the gap between two parsers that frame the same bytes differently; a proxy
closes it by refusing every message whose framing is not unambiguous: ``Content-Length`` together with
``Transfer-Encoding``, differing or malformed ``Content-Length`` values, and any ``Transfer-Encoding``
other than exactly ``chunked``.
"""

from __future__ import annotations

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http1._messages import Headers

UNTIL_CLOSE = -1
"""A response framed by neither header: its body runs until the server closes the connection."""

MAX_CHUNK_LINE = 4096
"""A chunk-size line with its extensions. Clients send a few hex digits; extensions are almost unused."""


def body_length(headers: Headers, bodiless: bool, request: bool) -> int | None:
    """The body's length, ``None`` for chunked, or ``UNTIL_CLOSE``; raises ``DecodeError`` on ambiguity."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        if len(name) not in (14, 17):  # the lengths of the two framing names: skip the rest cheaply
            continue
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value.strip())
        elif lowered == b"transfer-encoding":
            codings.extend(part.strip().lower() for part in value.split(b","))
    if lengths and codings:
        raise DecodeError("smuggling", "both Content-Length and Transfer-Encoding")
    if bodiless:
        return 0
    if codings:
        if codings != [b"chunked"]:
            raise DecodeError("smuggling", f"Transfer-Encoding {b', '.join(codings)!r}: only 'chunked' is relayed")
        return None
    if lengths:
        if len(set(lengths)) > 1:
            raise DecodeError("smuggling", f"differing Content-Length values {lengths!r}")
        value = lengths[0]
        if not value.isdigit() or len(value) > 18:
            raise DecodeError("smuggling", f"malformed Content-Length {value!r}")
        return int(value)
    return 0 if request else UNTIL_CLOSE


class ChunkScanner:
    """Finds the end of a chunked body as its bytes arrive, counting the data against the body limit.

    A declared chunk size is checked before its data is awaited, so a peer cannot make the decoder buffer
    more than the limit; the framing around the data (size lines, CRLFs, trailers) is bounded too.
    """

    __slots__ = ("_data", "_in_trailers", "_overhead", "_pos", "max_body_size", "max_overhead")

    def __init__(self, max_body_size: int, max_overhead: int) -> None:
        self.max_body_size = max_body_size
        self.max_overhead = max_overhead + max_body_size
        self._pos = -1
        self._data = 0
        self._overhead = 0
        self._in_trailers = False

    def scan(self, buffer: bytes | bytearray, base: int, start: int) -> int:
        """The offset just past the body in ``buffer`` (its message begins at ``base``, its body at ``start``),
        or -1: need more. Progress is kept relative to ``base``, which moves when the buffer is compacted."""
        pos = start if self._pos < 0 else base + self._pos
        while True:
            if self._in_trailers:
                end = self._trailers_end(buffer, pos)
                if end < 0:
                    self._pos = pos - base
                return end
            line_end = buffer.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
            if line_end < 0:
                if len(buffer) - pos >= MAX_CHUNK_LINE:
                    raise DecodeError("bad_request", f"a chunk-size line longer than {MAX_CHUNK_LINE} bytes")
                self._pos = pos - base
                return -1
            size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip(b" \t")
            if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise DecodeError("bad_request", f"chunk size {size_text[:20]!r} is not hexadecimal")
            size = int(size_text, 16)
            self._data += size
            if self._data > self.max_body_size:
                raise DecodeError("body_too_large", f"chunked body exceeds {self.max_body_size} bytes")
            self._count(line_end + 2 - pos + 2)
            if size == 0:
                self._in_trailers = True
                pos = line_end + 2
                continue
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                self._data -= size  # counted again when the line is re-read
                self._overhead -= line_end + 4 - pos
                self._pos = pos - base
                return -1
            if buffer[data_end : data_end + 2] != b"\r\n":
                raise DecodeError("bad_request", "chunk data is not followed by CRLF")
            pos = data_end + 2

    def _trailers_end(self, buffer: bytes | bytearray, pos: int) -> int:
        if buffer.startswith(b"\r\n", pos):
            return pos + 2
        found = buffer.find(b"\r\n\r\n", pos)
        if found < 0:
            if len(buffer) - pos > MAX_CHUNK_LINE * 16:
                raise DecodeError("head_too_large", "chunked trailers without an end")
            return -1
        return found + 4

    def _count(self, overhead: int) -> None:
        self._overhead += overhead
        if self._overhead > self.max_overhead:
            raise DecodeError("body_too_large", "chunk framing overhead exceeds the limit")
