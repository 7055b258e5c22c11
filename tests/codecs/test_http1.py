"""Specifications of the HTTP/1.1 message layer (``meshproxy.codecs.http1``).

Bytes come from real implementations: boto3 talking to a moto DynamoDB server (recorded by
``tests/fixtures/record_http1.py``) and h11, which writes chunked requests and responses, interim ``100
Continue`` and gzip-encoded bodies the way a well-kept library does. Malformed inputs are hand-made
variants of those real bytes.
"""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import h11
import pytest

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http1 import (
    Http1RequestDecoder,
    Http1ResponseDecoder,
    HttpRequest,
    HttpResponse,
    decoded_body,
    encode,
    looks_like_http1,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "http1"
REQUESTS = (FIXTURES / "dynamo_keepalive.c2s.bin").read_bytes()
RESPONSES = (FIXTURES / "dynamo_keepalive.s2c.bin").read_bytes()
PUT_ITEM = (FIXTURES / "put_item.request.bin").read_bytes()
OPERATIONS = [b"CreateTable", b"PutItem", b"GetItem", b"Query", b"GetItem"]


def h11_request(
    body_parts: list[bytes], *, chunked: bool = True, method: str = "POST", extra: list[tuple[str, str]] | None = None
) -> bytes:
    """The bytes h11's client writes for a request whose body is sent as ``body_parts``."""
    client = h11.Connection(h11.CLIENT)
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(sum(map(len, body_parts))))
    headers = [("Host", "dynamodb.local"), ("X-Amz-Target", "DynamoDB_20120810.PutItem"), framing, *(extra or [])]
    data = client.send(h11.Request(method=method, target="/", headers=headers))
    for part in body_parts:
        data += client.send(h11.Data(data=part))
    return data + client.send(h11.EndOfMessage())


def h11_response(
    body_parts: list[bytes],
    *,
    chunked: bool = True,
    extra: list[tuple[str, str]] | None = None,
    interim: bool = False,
    method: str = "POST",
) -> bytes:
    """The bytes h11's server writes answering a request (optionally after an interim ``100 Continue``)."""
    server = h11.Connection(h11.SERVER)
    request = [("Host", "x"), ("Content-Length", "2")]
    if interim:
        request.append(("Expect", "100-continue"))
    server.receive_data(h11.Connection(h11.CLIENT).send(h11.Request(method=method, target="/", headers=request)))
    server.next_event()
    data = b""
    if interim:
        data += server.send(h11.InformationalResponse(status_code=100, headers=[]))
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(sum(map(len, body_parts))))
    headers = [("Content-Type", "application/x-amz-json-1.0"), framing, *(extra or [])]
    data += server.send(h11.Response(status_code=200, headers=headers))
    for part in body_parts:
        data += server.send(h11.Data(data=part))
    return data + server.send(h11.EndOfMessage())


def test_recorded_boto3_stream_decodes_to_one_request_per_operation_with_exact_raw_slices() -> None:
    requests = Http1RequestDecoder().feed(REQUESTS)
    assert [r.header(b"X-Amz-Target") for r in requests] == [b"DynamoDB_20120810." + op for op in OPERATIONS]
    assert b"".join(r.raw for r in requests) == REQUESTS
    for request in requests:
        assert request.method == b"POST"
        assert request.target == b"/"
        assert request.version == "1.1"
        assert request.keep_alive
        assert int(request.header(b"content-length") or b"-1") == len(request.body)
        assert request.raw.endswith(request.body)


def test_recorded_moto_responses_split_at_content_length_and_keep_the_error_body() -> None:
    responses = Http1ResponseDecoder().feed(RESPONSES)
    assert [r.status for r in responses] == [200, 200, 200, 200, 400]
    assert b"".join(r.raw for r in responses) == RESPONSES
    assert b"ResourceNotFoundException" in responses[-1].body
    assert responses[0].reason == b"OK"
    # werkzeug closes every connection: the decoder reports it.
    assert not any(r.keep_alive for r in responses)


def test_header_lookup_ignores_case_and_keeps_wire_order() -> None:
    (request,) = Http1RequestDecoder().feed(PUT_ITEM)
    assert request.header(b"x-amz-target") == request.header(b"X-AMZ-TARGET") == b"DynamoDB_20120810.PutItem"
    assert request.header(b"no-such-header") is None
    assert request.headers[0][0] == b"Host"
    assert b"".join(b"%s: %s\r\n" % h for h in request.headers) in request.raw


def test_pipelined_requests_in_one_feed_come_out_in_order_and_a_partial_one_stays_buffered() -> None:
    decoder = Http1RequestDecoder()
    cut = len(REQUESTS) - 10
    requests = decoder.feed(REQUESTS[:cut])
    assert len(requests) == 4
    assert decoder.buffered == len(requests_last := REQUESTS[sum(len(r.raw) for r in requests) : cut])
    assert requests_last.startswith(b"POST ")
    (last,) = decoder.feed(REQUESTS[cut:])
    assert last.header(b"x-amz-target") == b"DynamoDB_20120810.GetItem"
    assert decoder.buffered == 0


def test_keep_alive_follows_the_connection_header_even_for_a_request_without_body() -> None:
    closing = h11_request([], chunked=False, method="GET", extra=[("Connection", "close")])
    first, second = Http1RequestDecoder().feed(PUT_ITEM + closing)
    assert (first.keep_alive, second.keep_alive) == (True, False)
    assert (second.method, second.raw) == (b"GET", closing)


def test_a_101_switching_protocols_response_is_not_relayed_as_http1() -> None:
    server = h11.Connection(h11.SERVER)
    upgrade = [("Host", "x"), ("Connection", "upgrade"), ("Upgrade", "h2c")]
    server.receive_data(h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target="/", headers=upgrade)))
    server.next_event()
    data = server.send(h11.InformationalResponse(status_code=101, headers=upgrade[1:]))
    with pytest.raises(DecodeError) as caught:
        Http1ResponseDecoder().feed(data)
    assert caught.value.reason == "unsupported"


def test_empty_lines_before_a_request_line_are_skipped() -> None:
    (request,) = Http1RequestDecoder().feed(b"\r\n\r\n" + PUT_ITEM)
    assert request.raw == PUT_ITEM


def test_chunked_request_body_is_dechunked_and_raw_keeps_the_chunk_framing() -> None:
    data = h11_request([b'{"TableName": ', b'"users"}'])
    (request,) = Http1RequestDecoder().feed(data)
    assert request.chunked
    assert request.body == b'{"TableName": "users"}'
    assert request.raw == data
    assert b"\r\n0\r\n\r\n" in request.raw


def test_chunked_trailers_are_kept_apart_from_the_headers() -> None:
    client = h11.Connection(h11.CLIENT)
    headers = [("Host", "x"), ("Transfer-Encoding", "chunked")]
    data = client.send(h11.Request(method="POST", target="/", headers=headers))
    data += client.send(h11.Data(data=b"{}"))
    data += client.send(h11.EndOfMessage(headers=[("X-Checksum", "abc")]))
    (request,) = Http1RequestDecoder().feed(data)
    assert (request.body, request.trailers, request.raw) == (b"{}", [(b"X-Checksum", b"abc")], data)
    assert request.header(b"x-checksum") is None
    assert b"X-Checksum" not in encode(request)


def test_chunked_response_body_is_dechunked() -> None:
    data = h11_response([b'{"Item": ', b"{}}", b""])
    decoder = Http1ResponseDecoder()
    (response,) = decoder.feed(data)
    assert (response.status, response.body, response.raw, response.chunked) == (200, b'{"Item": {}}', data, True)
    assert response.keep_alive


def test_a_chunk_size_over_the_body_limit_fails_when_its_size_line_arrives() -> None:
    data = h11_request([b"x" * 5000])
    decoder = Http1RequestDecoder(max_body_size=4096)
    size_line_end = data.index(b"\r\n", data.index(b"\r\n\r\n") + 4) + 2
    with pytest.raises(DecodeError) as caught:
        decoder.feed(data[:size_line_end])
    assert caught.value.reason == "body_too_large"
    assert decoder.buffered == size_line_end


def test_chunked_body_limit_counts_all_chunks() -> None:
    with pytest.raises(DecodeError) as caught:
        Http1RequestDecoder(max_body_size=4096).feed(h11_request([b"x" * 3000, b"y" * 3000]))
    assert caught.value.reason == "body_too_large"


def test_expect_100_continue_is_exposed_on_the_request() -> None:
    data = h11_request([b"{}"], chunked=False, extra=[("Expect", "100-continue")])
    (request,) = Http1RequestDecoder().feed(data)
    assert request.expects_continue
    (plain,) = Http1RequestDecoder().feed(PUT_ITEM)
    assert not plain.expects_continue


def test_interim_100_continue_is_its_own_message_and_does_not_consume_the_head_expectation() -> None:
    body = b'{"ok": true}'
    data = h11_response([body], chunked=False, interim=True)
    decoder = Http1ResponseDecoder()
    decoder.expect_response(head=False)
    interim, final = decoder.feed(data)
    assert (interim.status, interim.interim, interim.body) == (100, True, b"")
    assert (final.status, final.body) == (200, body)
    assert interim.raw + final.raw == data


def test_response_to_head_has_no_body_even_with_content_length() -> None:
    head = h11_response([], chunked=False, method="HEAD", extra=[])
    head = head.replace(b"Content-Length: 0", b"Content-Length: 789")  # what a HEAD answer declares
    following = h11_response([b"{}"], chunked=False)
    decoder = Http1ResponseDecoder()
    decoder.expect_response(head=True)
    decoder.expect_response(head=False)
    first, second = decoder.feed(head + following)
    assert (first.body, first.raw) == (b"", head)
    assert second.body == b"{}"


def test_response_without_framing_is_read_until_the_server_closes() -> None:
    data = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"
    decoder = Http1ResponseDecoder()
    assert decoder.feed(data) == []
    (response,) = decoder.end_of_stream()
    assert (response.body, response.raw, response.keep_alive) == (b"until close", data, False)


def test_a_stream_that_ends_inside_a_request_is_truncated() -> None:
    decoder = Http1RequestDecoder()
    decoder.feed(PUT_ITEM[:-5])
    with pytest.raises(DecodeError) as caught:
        decoder.end_of_stream()
    assert caught.value.reason == "truncated"


def test_gzip_body_is_decoded_within_its_bound() -> None:
    document = b'{"Items": [' + b'{"pk": {"S": "u1"}},' * 200 + b"{}]}"
    data = h11_response([gzip.compress(document)], chunked=False, extra=[("Content-Encoding", "gzip")])
    (response,) = Http1ResponseDecoder().feed(data)
    assert decoded_body(response, max_size=len(document)) == document
    with pytest.raises(DecodeError) as caught:
        decoded_body(response, max_size=len(document) - 1)
    assert caught.value.reason == "body_too_large"


def test_a_gzip_body_of_several_members_decodes_whole_and_a_truncated_one_is_refused() -> None:
    members = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    data = h11_response([members], chunked=False, extra=[("Content-Encoding", "gzip")])
    (response,) = Http1ResponseDecoder().feed(data)
    assert decoded_body(response, max_size=100) == b'{"a": 1}'
    response.body = gzip.compress(b'{"a": 1}')[:-9]
    with pytest.raises(DecodeError) as caught:
        decoded_body(response, max_size=100)
    assert caught.value.reason == "bad_encoding"


def test_a_gzip_bomb_fails_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KiB that inflate to 64 MiB
    data = h11_response([bomb], chunked=False, extra=[("Content-Encoding", "gzip")])
    (response,) = Http1ResponseDecoder().feed(data)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as caught:
            decoded_body(response, max_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "body_too_large"
    assert peak < 4 * 1024 * 1024  # the bound and one step, not the 64 MiB the bomb holds


def test_identity_body_passes_unchanged_and_unknown_codings_are_refused() -> None:
    (request,) = Http1RequestDecoder().feed(PUT_ITEM)
    assert decoded_body(request, max_size=len(request.body)) == request.body
    request.headers.append((b"Content-Encoding", b"br"))
    with pytest.raises(DecodeError) as caught:
        decoded_body(request, max_size=10_000)
    assert caught.value.reason == "unsupported_encoding"


SMUGGLING = {
    "content_length_and_transfer_encoding": lambda: PUT_ITEM.replace(
        b"Content-Length:", b"Transfer-Encoding: chunked\r\nContent-Length:"
    ),
    "differing_content_lengths": lambda: PUT_ITEM.replace(
        b"Content-Length: 93", b"Content-Length: 93\r\nContent-Length: 9"
    ),
    "same_content_length_twice": lambda: PUT_ITEM.replace(
        b"Content-Length: 93", b"Content-Length: 93\r\nContent-Length: 93"
    ),
    "transfer_encoding_chunked_not_last": lambda: h11_request([b"{}"]).replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, identity"
    ),
    "transfer_encoding_gzip_chunked": lambda: h11_request([b"{}"]).replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked"
    ),
    "transfer_encoding_twice": lambda: h11_request([b"{}"]).replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
    ),
    "obs_fold_continuation": lambda: PUT_ITEM.replace(b"\r\nContent-Type:", b"\r\n Content-Type:"),
    "content_length_with_sign": lambda: PUT_ITEM.replace(b"Content-Length: 93", b"Content-Length: +93"),
    "space_before_colon": lambda: PUT_ITEM.replace(b"Content-Length:", b"Content-Length :"),
    "bare_lf_line_ending": lambda: PUT_ITEM.replace(b"\r\nContent-Type", b"\nContent-Type"),
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_every_ambiguous_framing_is_refused(case: str) -> None:
    decoder = Http1RequestDecoder()
    with pytest.raises(DecodeError) as caught:
        decoder.feed(SMUGGLING[case]())
    assert caught.value.reason in ("smuggling", "bad_request")
    with pytest.raises(DecodeError):  # poisoned
        decoder.feed(PUT_ITEM)


@pytest.mark.parametrize(
    "case", ["content_length_and_transfer_encoding", "differing_content_lengths", "obs_fold_continuation"]
)
def test_the_clearest_smuggling_attempts_are_named_smuggling(case: str) -> None:
    with pytest.raises(DecodeError) as caught:
        Http1RequestDecoder().feed(SMUGGLING[case]())
    assert caught.value.reason == "smuggling"


def test_a_head_without_end_fails_at_the_limit_with_only_that_much_buffered() -> None:
    decoder = Http1RequestDecoder(max_header_size=1024)
    head = PUT_ITEM[: PUT_ITEM.index(b"\r\n\r\n")]
    assert decoder.feed(head) == []
    padding = b"X-Padding: " + b"a" * 100 + b"\r\n"
    assert decoder.feed(padding) == []
    with pytest.raises(DecodeError) as caught:
        decoder.feed(padding * 2)
    assert caught.value.reason == "head_too_large"
    # The limit plus at most the one read that crossed it.
    assert len(head) + len(padding) < 1024 < decoder.buffered == len(head) + 3 * len(padding)


def test_a_declared_content_length_over_the_limit_fails_before_any_body_is_buffered() -> None:
    decoder = Http1RequestDecoder(max_body_size=1024 * 1024)
    head = PUT_ITEM[: PUT_ITEM.index(b"\r\n\r\n") + 4].replace(b"Content-Length: 93", b"Content-Length: 999999999")
    with pytest.raises(DecodeError) as caught:
        decoder.feed(head + b"{")
    assert caught.value.reason == "body_too_large"
    assert decoder.buffered == len(head) + 1


def test_good_requests_before_a_bad_one_in_the_same_feed_are_kept() -> None:
    decoder = Http1RequestDecoder()
    with pytest.raises(DecodeError):
        decoder.feed(PUT_ITEM + b"NOT HTTP AT ALL\x00\r\n\r\n")
    assert [r.raw for r in decoder.decoded_before_error()] == [PUT_ITEM]
    assert decoder.unconsumed().startswith(b"NOT HTTP")
    assert decoder.decoded_before_error() == []


def test_connect_and_upgrade_are_not_relayed_as_http1() -> None:
    with pytest.raises(DecodeError) as caught:
        Http1RequestDecoder().feed(b"CONNECT db:443 HTTP/1.1\r\nHost: db:443\r\n\r\n")
    assert caught.value.reason == "unsupported"


def test_encode_of_an_unchanged_content_length_message_is_its_raw_bytes() -> None:
    for request in Http1RequestDecoder().feed(REQUESTS):
        assert encode(request) == request.raw
    for response in Http1ResponseDecoder().feed(RESPONSES):
        assert encode(response) == response.raw


def test_encode_reframes_a_chunked_message_with_content_length() -> None:
    (request,) = Http1RequestDecoder().feed(h11_request([b'{"a": ', b"1}"]))
    encoded = encode(request)
    assert b"Transfer-Encoding" not in encoded
    assert b"Content-Length: 8\r\n" in encoded
    (again,) = Http1RequestDecoder().feed(encoded)
    assert (again.body, again.chunked, again.header(b"host")) == (b'{"a": 1}', False, b"dynamodb.local")


def test_encode_of_a_changed_body_fixes_content_length() -> None:
    (response,) = Http1ResponseDecoder().feed(RESPONSES[: RESPONSES.index(b"HTTP/1.1", 10)])
    response.body = b'{"TableDescription": {}}'
    (again,) = Http1ResponseDecoder().feed(encode(response))
    assert again.body == response.body
    assert again.header(b"content-length") == b"%d" % len(response.body)


def test_encode_of_an_interim_response_has_no_content_length() -> None:
    interim = Http1ResponseDecoder().feed(h11_response([b"{}"], chunked=False, interim=True))[0]
    assert encode(interim) == interim.raw == b"HTTP/1.1 100 \r\n\r\n"


def test_sniffer_claims_a_request_line_and_waits_for_a_space() -> None:
    assert looks_like_http1(PUT_ITEM[:16]) is True
    assert looks_like_http1(b"POS") is None
    assert looks_like_http1(b"") is None
    assert looks_like_http1(b"\x16\x03\x01\x02\x00") is False  # a TLS ClientHello
    assert looks_like_http1(b"\x3a\x00\x00\x00") is False  # a Mongo message length
    assert looks_like_http1(b" GET") is False


def test_message_types_are_the_ones_exported() -> None:
    assert isinstance(Http1RequestDecoder().feed(PUT_ITEM)[0], HttpRequest)
    assert isinstance(Http1ResponseDecoder().feed(RESPONSES)[0], HttpResponse)

