"""Reading a ClientHello's server name and ALPN without terminating TLS, from the bytes the standard
library's TLS client (OpenSSL) really writes; and matching names to clusters as Envoy's server_names do."""

from __future__ import annotations

import contextlib
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.tls_hello import MAX_HELLO, ClientHello, match_server_name, read_client_hello


def client_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    context = ssl.create_default_context()
    if server_hostname is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_the_server_name_and_alpn_of_a_real_client_hello() -> None:
    hello = client_hello("DB.Example.com", ["h2", "http/1.1"])
    assert read_client_hello(hello) == ClientHello("db.example.com", ("h2", "http/1.1"))


def test_a_client_connecting_by_address_sends_no_server_name() -> None:
    assert read_client_hello(client_hello(None)) == ClientHello(None, ())


def test_a_partial_hello_needs_more_bytes_and_never_allocates_what_it_declares() -> None:
    hello = client_hello("db.example.com")
    for cut in (0, 4, 5, 40, len(hello) - 1):
        assert read_client_hello(hello[:cut]) is None
    huge = b"\x16\x03\x01" + (MAX_HELLO + 1).to_bytes(2, "big")
    with pytest.raises(DecodeError):
        read_client_hello(huge)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_after_a_record_header_never_crash(body: bytes) -> None:
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    with contextlib.suppress(DecodeError):  # refusing is fine; anything else raised is a bug
        read_client_hello(record)


def test_names_match_exactly_then_by_the_longest_wildcard_then_any() -> None:
    routes = {"db.example.com": "a", "*.example.com": "b", "*.eu.example.com": "c", "*": "d"}
    assert match_server_name("db.example.com", routes) == "a"
    assert match_server_name("x.eu.example.com", routes) == "c"
    assert match_server_name("x.y.example.com", routes) == "b"
    assert match_server_name("other.org", routes) == "d"
    assert match_server_name(None, routes) == "d"
    assert match_server_name("other.org", {"db.example.com": "a"}) is None
