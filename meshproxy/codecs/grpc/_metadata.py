"""What gRPC puts in HTTP/2 headers and trailers: the call's path, deadline, content type and status.

Everything here follows the gRPC over HTTP/2 protocol description (grpc/grpc ``doc/PROTOCOL-HTTP2.md``)
and its HTTP-to-gRPC status table (``doc/http-grpc-status-mapping.md``). Header names and values are
``bytes``, as h2 hands them over with ``header_encoding=None``: a proxy never has to guess a charset.

Malformed input raises ``DecodeError`` (``bad_path``, ``bad_timeout``), so a session can answer the call
with a gRPC error and count it; the one exception is ``grpc-message``, which the protocol says must never
make a receiver fail: broken percent-escapes are kept literally.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from enum import IntEnum

from meshproxy.codecs.errors import DecodeError

Headers = Iterable[tuple[bytes, bytes]]


class GrpcStatus(IntEnum):
    """The 17 status codes of gRPC (``grpc/status.h``); ``name`` is what Envoy and every gRPC library print."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# ---------------------------------------------------------------------------------------------- :path


def parse_path(path: bytes) -> tuple[str, str]:
    """``b"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``: the names stats are kept under.

    Exactly two non-empty segments after a leading ``/``; anything else (no leading slash, a missing or
    empty segment, a third segment, a query string, bytes that are not UTF-8) raises
    ``DecodeError("bad_path")``. The path is case-sensitive and returned as sent.
    """
    if path[:1] != b"/":
        raise DecodeError("bad_path", f"gRPC path {path[:80]!r} does not start with '/'")
    service, slash, method = path[1:].partition(b"/")
    if not slash or not service or not method or b"/" in method or b"?" in method:
        raise DecodeError("bad_path", f"gRPC path {path[:80]!r} is not /Service/Method")
    try:
        return service.decode(), method.decode()
    except UnicodeDecodeError:
        raise DecodeError("bad_path", f"gRPC path {path[:80]!r} is not UTF-8") from None


# ------------------------------------------------------------------------------------------ grpc-timeout

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
# Seconds per unit, as (multiplier, divisor) so that "100m" is exactly 100 / 1000 and not 100 * 0.001.
_UNITS: dict[bytes, tuple[int, int]] = {
    b"H": (3600, 1),
    b"M": (60, 1),
    b"S": (1, 1),
    b"m": (1, 1_000),
    b"u": (1, 1_000_000),
    b"n": (1, 1_000_000_000),
}
_NANOS: dict[bytes, int] = {unit: 1_000_000_000 * mul // div for unit, (mul, div) in _UNITS.items()}
MAX_TIMEOUT_DIGITS = 8


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` in seconds: ``b"100m"`` -> 0.1, ``b"1H"`` -> 3600.0.

    Grammar (PROTOCOL-HTTP2): 1 to 8 ASCII digits, then one unit of ``H M S m u n`` (hour, minute, second,
    milli-, micro-, nanosecond); units are case-sensitive (``M`` is minutes, ``m`` milliseconds). No sign,
    space, decimal point or ninth digit: each raises ``DecodeError("bad_timeout")``, and a session should
    then answer the call with ``INTERNAL``, as grpcio's server does. ``0`` is accepted (the deadline has
    already passed) although the grammar says "positive": clients compute the value from a clock and may
    round down to it.
    """
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise DecodeError("bad_timeout", f"grpc-timeout {value[:20]!r} is not 1-8 digits and a unit of HMSmun")
    multiplier, divisor = _UNITS[match[2]]
    return int(match[1]) * multiplier / divisor


def parse_timeout_ns(value: bytes) -> int:
    """``grpc-timeout`` in whole nanoseconds (exact, for deadline arithmetic on integer clocks)."""
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise DecodeError("bad_timeout", f"grpc-timeout {value[:20]!r} is not 1-8 digits and a unit of HMSmun")
    return int(match[1]) * _NANOS[match[2]]


_BIGGEST = 10**MAX_TIMEOUT_DIGITS - 1
_COARSE_FIRST = (b"H", b"M", b"S", b"m", b"u", b"n")


def format_timeout(seconds: float) -> bytes:
    """A ``grpc-timeout`` value for a deadline ``seconds`` away, at nanosecond resolution.

    Prefers the coarsest unit that states the time exactly (0.1 -> ``100m``, 90 -> ``90S``); when none fits
    in 8 digits, the finest unit that does, rounded up, so a forwarded deadline never shrinks. Zero or
    negative times give ``1n`` (the call is already late, and 0 is outside the grammar); times beyond
    99999999 hours are capped there.
    """
    nanos = max(1, round(seconds * 1e9)) if seconds > 0 else 1
    for unit in _COARSE_FIRST:
        per = _NANOS[unit]
        if nanos % per == 0 and nanos // per <= _BIGGEST:
            return b"%d" % (nanos // per) + unit
    for unit in reversed(_COARSE_FIRST):
        count = -(-nanos // _NANOS[unit])
        if count <= _BIGGEST:
            return b"%d" % count + unit
    return b"%dH" % _BIGGEST


# --------------------------------------------------------------------------------- grpc-status / message

_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x24\x26-\x7e]")


def decode_grpc_message(value: bytes) -> str:
    """Undo the percent-encoding of a ``grpc-message`` and read the result as UTF-8.

    The protocol forbids failing here: a ``%`` not followed by two hex digits is kept literally, and bytes
    that are not valid UTF-8 become U+FFFD. Hex digits are accepted in either case.
    """
    if b"%" in value:
        value = _PERCENT_ESCAPE.sub(lambda match: bytes((int(match[1], 16),)), value)
    return value.decode("utf-8", "replace")


def encode_grpc_message(text: str) -> bytes:
    """Percent-encode ``text`` as UTF-8 for ``grpc-message``: every byte outside printable ASCII, and ``%``,
    becomes ``%XX`` (upper-case hex), as the Percent-Encoded production requires."""
    data = text.encode()
    return _NEEDS_ESCAPE.sub(lambda match: b"%%%02X" % match[0][0], data)


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case, as HTTP/2 requires), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def status_from_trailers(headers: Headers) -> tuple[int, str]:
    """``(grpc-status, decoded grpc-message)`` of a call from its trailers (or a Trailers-Only HEADERS).

    The code is a ``GrpcStatus`` when it is one of the 17 known codes, else the plain ``int`` the peer sent
    (a newer peer may define more; stats should still see the number). When the peer sent no usable status,
    one is synthesised, as the protocol asks of every receiver: a non-200 ``:status`` maps through the
    HTTP-to-gRPC table; a missing or non-numeric ``grpc-status`` is ``UNKNOWN``; the message then says why.
    """
    headers = list(headers)
    raw_status = header(headers, b"grpc-status")
    raw_message = header(headers, b"grpc-message")
    message = decode_grpc_message(raw_message) if raw_message is not None else ""
    if raw_status is None:
        http_status = header(headers, b":status")
        if http_status is not None and http_status != b"200":
            code = http_status_to_grpc(int(http_status)) if http_status.isdigit() else GrpcStatus.UNKNOWN
            text = http_status.decode("ascii", "replace")
            return code, message or f"HTTP status {text} without grpc-status"
        return GrpcStatus.UNKNOWN, message or "no grpc-status in trailers"
    if not raw_status.isdigit() or len(raw_status) > 10:
        return GrpcStatus.UNKNOWN, f"grpc-status {raw_status[:20].decode('ascii', 'replace')!r} is not a number"
    number = int(raw_status)
    return (GrpcStatus(number) if number <= GrpcStatus.UNAUTHENTICATED else number), message


# Table of doc/http-grpc-status-mapping.md; every other code (200 included: a real OK carries
# grpc-status) is UNKNOWN.
_HTTP_TO_GRPC = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    431: GrpcStatus.INTERNAL,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}


def http_status_to_grpc(status: int) -> GrpcStatus:
    """The gRPC status a client reports for an HTTP response without ``grpc-status`` (a proxy's 503, say).

    Only for that case: a ``grpc-status`` that is present always wins, and the mapping is not meant to be
    reversed by servers.
    """
    return _HTTP_TO_GRPC.get(status, GrpcStatus.UNKNOWN)


# ---------------------------------------------------------------------------------------- content-type


def is_grpc_content_type(value: bytes) -> bool:
    """Whether ``content-type`` announces gRPC over HTTP/2: ``application/grpc`` alone, with a ``+proto``,
    ``+json`` or other ``+suffix`` naming the message format, or with ``;`` parameters (any case).

    ``application/grpc-web`` and ``application/grpc-web-text`` are refused: gRPC-Web is another protocol
    (trailers travel inside the body as a frame flagged 0x80, and ``-text`` is base64), which this codec
    does not decode and which a gRPC proxy must not pass to an HTTP/2 gRPC server as if it were gRPC.
    """
    value = value.strip().lower()
    if not value.startswith(b"application/grpc"):
        return False
    rest = value[len(b"application/grpc") :]
    return not rest or rest[0] in b"+;" or (rest[0] in b" \t" and rest.lstrip()[:1] in (b"", b";"))


# ----------------------------------------------------------------------------------- binary metadata


TRUE_BINARY_SETTING = 0xFE03
"""grpc core's SETTINGS parameter (GRPC_ALLOW_TRUE_BINARY_METADATA): when both peers send it with value 1,
``-bin`` values travel as a NUL byte followed by the raw bytes instead of base64. Such values are not legal
HTTP/2 field values, and h2 rejects them; a proxy built on h2 must not advertise the setting (then grpcio
sends base64), and must not forward a peer's advertisement of it to the other side."""


def decode_binary_header(value: bytes) -> list[bytes]:
    """The values of a ``-bin`` metadata header: comma-separated base64, padded or not (both must be read).

    A value that starts with NUL is grpc core's "true binary" form (see ``TRUE_BINARY_SETTING``): the rest
    is the raw value, taken whole. Raises ``DecodeError("bad_binary_header")`` for characters outside the
    base64 alphabet.
    """
    if value[:1] == b"\x00":
        return [value[1:]]
    values = []
    for part in value.split(b","):
        part = part.strip()
        try:
            values.append(base64.b64decode(part + b"=" * (-len(part) % 4), validate=True))
        except binascii.Error:
            raise DecodeError("bad_binary_header", f"{part[:40]!r} is not base64") from None
    return values


def encode_binary_header(value: bytes) -> bytes:
    """Base64 without padding, which the protocol says senders should emit."""
    return base64.b64encode(value).rstrip(b"=")

