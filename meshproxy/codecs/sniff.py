"""Which protocol does a connection speak? Decided from its first bytes.

Each codec registers a sniffer: ``sniffer(prefix) -> True`` (mine), ``False`` (never mine) or ``None`` (I
need more bytes). ``sniff`` asks them all; a listener with ``protocol: auto`` waits while any says None,
and relays the connection as plain TCP when all say no.
"""

from __future__ import annotations

from collections.abc import Callable

from meshproxy.codecs.http1 import looks_like_http1
from meshproxy.codecs.mongo import looks_like_mongo
from meshproxy.codecs.tls_hello import looks_like_tls

Sniffer = Callable[[bytes], bool | None]

TCP = "tcp"
"""The answer when no codec claims the bytes: relay them untouched."""

_sniffers: dict[str, Sniffer] = {}

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What every HTTP/2 client with prior knowledge (gRPC over h2c) sends first (RFC 9113 3.4)."""


def looks_like_http2(prefix: bytes) -> bool | None:
    """The HTTP/2 connection preface, or a prefix of it (None: need more bytes)."""
    size = min(len(prefix), len(HTTP2_PREFACE))
    if prefix[:size] != HTTP2_PREFACE[:size]:
        return False
    return True if size == len(HTTP2_PREFACE) else None


def register(name: str, sniffer: Sniffer) -> None:
    """Add (or replace) the sniffer of protocol ``name``."""
    _sniffers[name] = sniffer


def registered() -> list[str]:
    return list(_sniffers)


def sniff(prefix: bytes) -> str | None:
    """The protocol ``prefix`` starts, ``"tcp"`` when no codec claims it, None when more bytes are needed.

    Sniffers are asked in registration order, and one still undecided keeps later ones from winning: the
    HTTP/2 preface starts like an HTTP/1 request line (``PRI * ...``), so HTTP/1 must wait for HTTP/2.
    """
    undecided = False
    for name, sniffer in _sniffers.items():
        verdict = sniffer(prefix)
        if verdict and not undecided:
            return name
        if verdict is None:
            undecided = True
    return None if undecided else TCP


register("tls", looks_like_tls)  # first: a ClientHello is never another protocol's start, and it decides in 6 bytes
register("mongodb", looks_like_mongo)
register("http2", looks_like_http2)
register("http1", looks_like_http1)
