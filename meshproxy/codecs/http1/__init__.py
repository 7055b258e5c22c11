"""HTTP/1.1 as a sans-IO codec: the framing under the DynamoDB codec (and any other HTTP/1.1 protocol).

``Http1RequestDecoder`` / ``Http1ResponseDecoder``: ``feed(bytes) -> list[message]`` with the exact wire
bytes of each message in ``raw``; ``encode(message)`` re-frames a changed message with Content-Length;
``decoded_body`` undoes gzip bounded; ``looks_like_http1`` sniffs a connection's first bytes.
"""

from __future__ import annotations

from meshproxy.codecs.http1._decoder import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    Http1RequestDecoder,
    Http1ResponseDecoder,
)
from meshproxy.codecs.http1._framing import MAX_CHUNK_LINE
from meshproxy.codecs.http1._messages import (
    Headers,
    HttpMessage,
    HttpRequest,
    HttpResponse,
    decoded_body,
    encode,
    header_value,
    looks_like_http1,
)

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "MAX_CHUNK_LINE",
    "Headers",
    "Http1RequestDecoder",
    "Http1ResponseDecoder",
    "HttpMessage",
    "HttpRequest",
    "HttpResponse",
    "decoded_body",
    "encode",
    "header_value",
    "looks_like_http1",
]
