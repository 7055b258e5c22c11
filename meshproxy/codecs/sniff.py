"""Which protocol does a connection speak? Decided from its first bytes.

Each codec registers a sniffer: ``sniffer(prefix) -> True`` (mine), ``False`` (never mine) or ``None`` (I
need more bytes). ``sniff`` asks them all; a listener with ``protocol: auto`` waits while any says None,
and relays the connection as plain TCP when all say no.
"""

from __future__ import annotations

from collections.abc import Callable

from meshproxy.codecs.http1 import looks_like_http1
from meshproxy.codecs.mongo import looks_like_mongo

Sniffer = Callable[[bytes], bool | None]

TCP = "tcp"
"""The answer when no codec claims the bytes: relay them untouched."""

_sniffers: dict[str, Sniffer] = {}


def register(name: str, sniffer: Sniffer) -> None:
    """Add (or replace) the sniffer of protocol ``name``."""
    _sniffers[name] = sniffer


def registered() -> list[str]:
    return list(_sniffers)


def sniff(prefix: bytes) -> str | None:
    """The protocol ``prefix`` starts, ``"tcp"`` when no codec claims it, None when more bytes are needed."""
    undecided = False
    for name, sniffer in _sniffers.items():
        verdict = sniffer(prefix)
        if verdict:
            return name
        if verdict is None:
            undecided = True
    return None if undecided else TCP


register("mongodb", looks_like_mongo)
register("http1", looks_like_http1)
