"""Properties of the HTTP/1.1 decoders: the split of the input across ``feed`` calls never matters, and
nothing but ``DecodeError`` ever comes out of bad input."""

from __future__ import annotations

import contextlib
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http1 import PUT_ITEM, REQUESTS, RESPONSES, h11_request, h11_response

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http1 import Http1RequestDecoder, Http1ResponseDecoder, HttpRequest, HttpResponse, encode

CHUNKED_REQUESTS = h11_request([b'{"TableName": ', b'"users", ', b'"Key": {}}']) + h11_request([b"{}"])
CHUNKED_RESPONSES = h11_response([b"{", b'"Count": 0', b"}"], interim=True) + h11_response([b"{}"])
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12).map(sorted)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def _requests_in_pieces(data: bytes, cuts: list[int]) -> list[HttpRequest]:
    decoder = Http1RequestDecoder()
    out = [message for piece in _split(data, cuts) for message in decoder.feed(piece)]
    assert decoder.buffered == 0
    return out


def _responses_in_pieces(data: bytes, cuts: list[int]) -> list[HttpResponse]:
    decoder = Http1ResponseDecoder()
    out = [message for piece in _split(data, cuts) for message in decoder.feed(piece)]
    assert decoder.buffered == 0
    return out


@FAST
@given(st.data())
def test_any_split_of_the_recorded_requests_gives_the_same_requests(data: st.DataObject) -> None:
    for stream in (REQUESTS, CHUNKED_REQUESTS):
        assert _requests_in_pieces(stream, data.draw(_cuts(stream))) == Http1RequestDecoder().feed(stream)


@FAST
@given(st.data())
def test_any_split_of_the_recorded_responses_gives_the_same_responses(data: st.DataObject) -> None:
    for stream in (RESPONSES, CHUNKED_RESPONSES):
        assert _responses_in_pieces(stream, data.draw(_cuts(stream))) == Http1ResponseDecoder().feed(stream)


def test_byte_at_a_time_equals_all_at_once() -> None:
    assert _requests_in_pieces(CHUNKED_REQUESTS, list(range(1, len(CHUNKED_REQUESTS)))) == (
        Http1RequestDecoder().feed(CHUNKED_REQUESTS)
    )


@FAST
@given(st.binary(max_size=300))
def test_garbage_raises_only_decode_error(garbage: bytes) -> None:
    for decoder in (Http1RequestDecoder(max_header_size=256), Http1ResponseDecoder(max_header_size=256)):
        try:
            decoder.feed(garbage)
            decoder.end_of_stream()
        except DecodeError:
            pass


@FAST
@given(st.integers(0, len(PUT_ITEM) - 1), st.integers(0, 255), st.binary(max_size=4))
def test_mutated_real_requests_decode_or_raise_decode_error(position: int, byte: int, insert: bytes) -> None:
    for mutated in (
        PUT_ITEM[:position] + bytes([byte]) + PUT_ITEM[position + 1 :],
        PUT_ITEM[:position] + insert + PUT_ITEM[position:],
        CHUNKED_REQUESTS[:position] + bytes([byte]) + CHUNKED_REQUESTS[position + 1 :],
    ):
        decoder = Http1RequestDecoder()
        try:
            for request in decoder.feed(mutated):
                assert request.raw in mutated
        except DecodeError:
            pass


@FAST
@given(st.integers(0, len(CHUNKED_RESPONSES) - 1), st.integers(0, 255))
def test_mutated_real_responses_decode_or_raise_decode_error(position: int, byte: int) -> None:
    mutated = CHUNKED_RESPONSES[:position] + bytes([byte]) + CHUNKED_RESPONSES[position + 1 :]
    with contextlib.suppress(DecodeError):
        Http1ResponseDecoder().feed(mutated)


@FAST
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=6), st.booleans())
def test_encode_of_a_decoded_h11_request_decodes_to_the_same_request_with_content_length(
    parts: list[bytes], chunked: bool
) -> None:
    (request,) = Http1RequestDecoder().feed(h11_request(parts, chunked=chunked))
    encoded = encode(request)
    if not chunked:
        assert encoded == request.raw
    (again,) = Http1RequestDecoder().feed(encoded)
    assert (again.method, again.target, again.chunked) == (request.method, request.target, False)
    assert again.body == request.body == b"".join(parts)
    assert [h for h in again.headers if h[0].lower() != b"content-length"] == [
        h for h in request.headers if h[0].lower() not in (b"content-length", b"transfer-encoding")
    ]
