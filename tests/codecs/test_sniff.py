"""``sniff``: which protocol a connection speaks, from its first bytes (each produced by a real client)."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import h11
import pytest

from meshproxy.codecs import sniff as sniffing
from meshproxy.codecs.mongo import looks_like_mongo


def _http_request() -> bytes:
    """What an HTTP/1.1 client writes first (h11's own client serialisation)."""
    connection = h11.Connection(h11.CLIENT)
    return connection.send(h11.Request(method="GET", target="/", headers=[("Host", "127.0.0.1")])) or b""


def _tls_client_hello() -> bytes:
    """The ClientHello the standard library's TLS client writes first."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("scenario", ["handshake", "legacy_handshake", "insert_many"])
def test_a_recorded_first_client_message_sniffs_as_mongodb(
    scenario: str, recorded: Callable[[str, str], bytes]
) -> None:
    first = recorded(scenario, "c2s")
    assert sniffing.sniff(first[:16]) == "mongodb"
    assert sniffing.sniff(first) == "mongodb"


def test_a_server_reply_is_not_a_client_first_message(recorded: Callable[[str, str], bytes]) -> None:
    # responseTo is set: a proxy would never see this first on a client connection.
    assert looks_like_mongo(recorded("handshake", "s2c")) is False


def test_http_request_sniffs_as_http1() -> None:
    request = _http_request()
    assert request.startswith(b"GET / HTTP/1.1\r\n")
    assert sniffing.sniff(request) == "http1"
    assert sniffing.sniff(request[:4]) == "http1"  # a method token and a space; as a Mongo length, far too big
    assert sniffing.sniff(request[:2]) is None  # "GE" may still become a method


def test_a_tls_client_hello_sniffs_as_tls_within_six_bytes() -> None:
    """An ``auto`` listener then reads its server name to pass it through (or terminates it, with ``tls``)."""
    hello = _tls_client_hello()
    assert hello[0] == 0x16  # TLS handshake record
    assert sniffing.sniff(hello) == "tls"
    assert sniffing.sniff(hello[:6]) == "tls"
    assert sniffing.sniff(hello[:3]) is None


@pytest.mark.parametrize("size", [0, 1, 3, 4, 15])
def test_fewer_than_sixteen_plausible_bytes_need_more(size: int, recorded: Callable[[str, str], bytes]) -> None:
    assert sniffing.sniff(recorded("handshake", "c2s")[:size]) is None


def test_an_implausible_length_is_decided_before_sixteen_bytes() -> None:
    assert looks_like_mongo(b"\x05\x00\x00\x00") is False
    assert looks_like_mongo(b"\xff\xff\xff\x7f") is False


def test_mongodb_is_registered() -> None:
    assert "mongodb" in sniffing.registered()
