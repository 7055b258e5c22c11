"""HTTP/1.1 message values, their serialisation, and the helpers that read a body or sniff a stream.

A message keeps ``raw``, the exact bytes it arrived as, so that a proxy forwards an unchanged message byte
for byte (chunk framing, header case and order, whitespace and all); ``encode`` is only for a message a
filter changed, and frames it the one way every HTTP/1.1 peer reads: ``Content-Length``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from meshproxy.codecs.errors import DecodeError

Headers = list[tuple[bytes, bytes]]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    wanted = name.lower()
    found: list[bytes] = [value for key, value in headers if key.lower() == wanted]
    if not found:
        return None
    # RFC 9110 5.3: repeated fields are equivalent to one field whose values are joined by commas.
    return found[0] if len(found) == 1 else b", ".join(found)


@dataclass(slots=True)
class HttpRequest:
    """One request as received: ``headers`` in wire order and case, ``body`` de-chunked, ``raw`` as sent.

    ``trailers`` holds the trailer fields of a chunked body (rare; kept in ``raw``, dropped by ``encode``).
    ``expects_continue`` says the client sent ``Expect: 100-continue`` and may wait for an interim ``100``
    before it sends the body; whoever owns the connection decides to answer it or forward it.
    """

    method: bytes
    target: bytes
    version: str
    headers: Headers
    body: bytes
    raw: bytes
    keep_alive: bool
    chunked: bool = False
    trailers: Headers = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (any case); repeated headers joined by ``, ``; None when absent."""
        return header_value(self.headers, name)

    @property
    def expects_continue(self) -> bool:
        value = self.header(b"expect")
        return value is not None and value.strip().lower() == b"100-continue"


@dataclass(slots=True)
class HttpResponse:
    """One response as received; ``status`` 1xx responses are interim and come before the final one."""

    status: int
    reason: bytes
    version: str
    headers: Headers
    body: bytes
    raw: bytes
    keep_alive: bool
    chunked: bool = False
    trailers: Headers = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (any case); repeated headers joined by ``, ``; None when absent."""
        return header_value(self.headers, name)

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200


HttpMessage = HttpRequest | HttpResponse

_FRAMING = (b"content-length", b"transfer-encoding")


def _has_no_body_by_status(message: HttpMessage) -> bool:
    return isinstance(message, HttpResponse) and (message.interim or message.status in (204, 304))


def encode(message: HttpMessage) -> bytes:
    """Serialise ``message`` with ``Content-Length`` framing (``Transfer-Encoding`` and trailers dropped).

    Header names, values and order are kept; the one ``Content-Length`` is put where the first framing
    header was (or last). An unchanged ``Content-Length`` message therefore encodes to its ``raw`` bytes.
    A response that never has a body (1xx, 204, 304) gets no ``Content-Length``. A response to a HEAD
    request should keep its ``raw``: its ``Content-Length`` describes a body that is not there.
    """
    if isinstance(message, HttpRequest):
        start = b"%s %s HTTP/%s\r\n" % (message.method, message.target, message.version.encode())
    else:
        start = b"HTTP/%s %d %s\r\n" % (message.version.encode(), message.status, message.reason)
    no_body = _has_no_body_by_status(message)
    length = b"Content-Length: %d\r\n" % len(message.body)
    lines = [start]
    placed = no_body or (isinstance(message, HttpRequest) and not message.body and not _has_framing(message))
    for name, value in message.headers:
        if name.lower() in _FRAMING:
            if not placed:
                is_te = name.lower() == b"transfer-encoding"
                lines.append(length if is_te else b"%s: %d\r\n" % (name, len(message.body)))
                placed = True
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    if not placed:
        lines.append(length)
    lines.append(b"\r\n")
    if not no_body:
        lines.append(message.body)
    return b"".join(lines)


def _has_framing(message: HttpMessage) -> bool:
    return any(name.lower() in _FRAMING for name, _ in message.headers)


GZIP_WINDOW = 16 + zlib.MAX_WBITS
"""zlib's ``wbits`` for a gzip wrapper (RFC 1952) around deflate."""

_INFLATE_STEP = 64 * 1024


def decoded_body(message: HttpMessage, max_size: int) -> bytes:
    """The body with its ``Content-Encoding`` undone: ``gzip``/``x-gzip``/``deflate`` inflated, ``identity``
    (or none) as is; never more than ``max_size`` bytes are produced.

    A gzip bomb (a few KiB that inflate to GiB) fails with ``DecodeError("body_too_large")`` after at most
    ``max_size + 64 KiB`` bytes of output: ``decompressobj`` is driven with ``max_length``, so the output is
    produced in bounded steps rather than all at once. An unknown coding is ``"unsupported_encoding"``.
    """
    coding = (message.header(b"content-encoding") or b"identity").strip().lower()
    body = message.body
    if coding in (b"", b"identity"):
        return body
    if coding in (b"gzip", b"x-gzip"):
        inflater = zlib.decompressobj(GZIP_WINDOW)
    elif coding == b"deflate":
        inflater = zlib.decompressobj()
    else:
        raise DecodeError("unsupported_encoding", f"content-encoding {coding!r}")
    out = bytearray()
    pending = body
    try:
        while True:
            chunk = inflater.decompress(pending, _INFLATE_STEP)
            out += chunk
            if len(out) > max_size:
                raise DecodeError("body_too_large", f"the decoded body exceeds {max_size} bytes")
            pending = inflater.unconsumed_tail
            if inflater.eof:
                if not inflater.unused_data:
                    break
                # RFC 1952 2.2: a gzip file may hold several members, one after the other.
                pending = inflater.unused_data
                inflater = zlib.decompressobj(GZIP_WINDOW if coding != b"deflate" else zlib.MAX_WBITS)
            elif not pending and not chunk:
                break
    except zlib.error as error:
        raise DecodeError("bad_encoding", f"{coding.decode(errors='replace')} body: {error}") from None
    if not inflater.eof:
        raise DecodeError("bad_encoding", "the compressed body is truncated")
    return bytes(out)


_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
MAX_METHOD_SNIFF = 24
"""Longest method token the sniffer waits for (``VERSION-CONTROL``, the longest registered one, is 15)."""


def looks_like_http1(prefix: bytes) -> bool | None:
    """Whether a connection's first bytes start an HTTP/1.x request: a method token then a space.

    None when every byte so far is a token character and no space has come yet (need more bytes).
    """
    for index, byte in enumerate(prefix[:MAX_METHOD_SNIFF + 1]):
        if byte == 0x20:
            return index > 0
        if byte not in _TCHAR:
            return False
    return None if len(prefix) <= MAX_METHOD_SNIFF else False
