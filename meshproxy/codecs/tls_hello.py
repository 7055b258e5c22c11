"""A TLS ClientHello, read from a connection's first bytes without terminating TLS: the server name (SNI)
and ALPN protocols a client asks for, so a listener can pass the connection through, still encrypted, to
the cluster that name belongs to (Envoy's ``tls_inspector``).

Sans-IO and bounded: ``read_client_hello(prefix)`` returns None while the hello is incomplete, and raises
``DecodeError`` for anything that is not a well-formed ClientHello or that would exceed ``MAX_HELLO`` (a real
one is a few hundred bytes; 16 KiB is TLS's largest record). Only the first record is read: a ClientHello
split over several records (legal, never seen from real clients) is refused, and the connection is then
relayed to the listener's default cluster like any unrecognised bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from meshproxy.codecs.errors import DecodeError

MAX_HELLO = 16 * 1024
T = TypeVar("T")
_HANDSHAKE, _CLIENT_HELLO = 0x16, 0x01
_SERVER_NAME, _ALPN = 0x0000, 0x0010


@dataclass(slots=True, frozen=True)
class ClientHello:
    server_name: str | None
    """The SNI host name (lower case), None when the client sent none (it connected by IP address)."""
    alpn: tuple[str, ...]


def looks_like_tls(prefix: bytes) -> bool | None:
    """A TLS handshake record carrying a ClientHello (None: need more bytes)."""
    if not prefix:
        return None
    if prefix[0] != _HANDSHAKE:
        return False
    if len(prefix) < 2:
        return None
    if prefix[1] != 0x03:
        return False
    if len(prefix) < 6:
        return None
    return prefix[5] == _CLIENT_HELLO


def _error(detail: str) -> DecodeError:
    return DecodeError("bad_client_hello", detail)


def read_client_hello(prefix: bytes) -> ClientHello | None:
    """The ClientHello at the start of ``prefix``; None while more bytes are needed."""
    if len(prefix) < 5:
        return None
    kind, major, length = prefix[0], prefix[1], struct.unpack_from(">H", prefix, 3)[0]
    if kind != _HANDSHAKE or major != 0x03:
        raise _error("not a TLS handshake record")
    if length > MAX_HELLO:
        raise _error(f"a record of {length} bytes")
    if len(prefix) < 5 + length:
        return None
    record = prefix[5 : 5 + length]
    if len(record) < 4 or record[0] != _CLIENT_HELLO:
        raise _error("the first handshake message is not a ClientHello")
    body_length = int.from_bytes(record[1:4], "big")
    if body_length > len(record) - 4:
        raise _error("a ClientHello split over several records")
    body = record[4 : 4 + body_length]
    try:
        return _parse(body)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise _error(f"malformed ClientHello ({exc})") from None


def _parse(body: bytes) -> ClientHello:
    pos = 2 + 32  # legacy_version, random
    pos += 1 + body[pos]  # legacy_session_id
    pos += 2 + struct.unpack_from(">H", body, pos)[0]  # cipher_suites
    pos += 1 + body[pos]  # legacy_compression_methods
    if pos == len(body):
        return ClientHello(None, ())
    end = pos + 2 + struct.unpack_from(">H", body, pos)[0]
    if end > len(body):
        raise IndexError("extensions run past the ClientHello")
    pos += 2
    name: str | None = None
    alpn: tuple[str, ...] = ()
    while pos + 4 <= end:
        kind, size = struct.unpack_from(">HH", body, pos)
        data = body[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if kind == _SERVER_NAME:
            name = _server_name(data)
        elif kind == _ALPN:
            alpn = _protocols(data)
    return ClientHello(name, alpn)


def _server_name(data: bytes) -> str | None:
    pos = 2  # server_name_list length
    while pos + 3 <= len(data):
        kind, size = data[pos], struct.unpack_from(">H", data, pos + 1)[0]
        if kind == 0:  # host_name
            return data[pos + 3 : pos + 3 + size].decode("ascii").lower().rstrip(".")
        pos += 3 + size
    return None


def _protocols(data: bytes) -> tuple[str, ...]:
    found = []
    pos = 2
    while pos < len(data):
        size = data[pos]
        found.append(data[pos + 1 : pos + 1 + size].decode("ascii", errors="replace"))
        pos += 1 + size
    return tuple(found)


def match_server_name(name: str | None, routes: Mapping[str, T]) -> T | None:
    """The value ``routes`` gives ``name``: an exact entry, else the longest ``*.suffix`` wildcard that covers
    it (one or more labels, as Envoy's ``server_names``), else ``*`` (any name, or none)."""
    if name is not None:
        if name in routes:
            return routes[name]
        labels = name.split(".")
        for start in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[start:])
            if wildcard in routes:
                return routes[wildcard]
    return routes.get("*")
