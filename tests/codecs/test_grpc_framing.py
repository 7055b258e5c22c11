"""The Length-Prefixed-Message decoder and per-message compression, on bytes built by hand.

The recorded-traffic tests (``test_grpc_recorded.py``) show the decoder agrees with grpcio; these pin the
edges a real peer rarely shows: limits checked before anything is buffered, bad flags, truncation,
poisoning, and compression bombs.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.grpc import (
    DEFAULT_MAX_MESSAGE_SIZE,
    GrpcMessage,
    GrpcMessageDecoder,
    compress,
    decompress,
    encode_message,
)


def prefix(flag: int, length: int) -> bytes:
    return bytes([flag]) + length.to_bytes(4, "big")


# ---------------------------------------------------------------------------------------------- framing


def test_a_message_is_a_flag_a_big_endian_length_and_the_bytes() -> None:
    assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_message(b"abc", compressed=True) == b"\x01\x00\x00\x00\x03abc"


def test_one_feed_with_one_message_returns_it_with_its_raw_bytes() -> None:
    raw = encode_message(b"hello")
    assert GrpcMessageDecoder().feed(raw) == [GrpcMessage(False, b"hello", raw)]


def test_many_messages_in_one_data_frame_all_come_out_in_order() -> None:
    frame = b"".join(encode_message(b"m%d" % i, compressed=i % 2 == 1) for i in range(100))
    messages = GrpcMessageDecoder().feed(frame)
    assert [m.data for m in messages] == [b"m%d" % i for i in range(100)]
    assert [m.compressed for m in messages] == [i % 2 == 1 for i in range(100)]


def test_a_message_split_over_many_data_frames_comes_out_once_whole() -> None:
    body = bytes(range(256)) * 200
    raw = encode_message(body)
    decoder = GrpcMessageDecoder()
    out: list[GrpcMessage] = []
    for start in range(0, len(raw), 16384):
        out += decoder.feed(raw[start : start + 16384])
        assert decoder.buffered == (0 if out else min(start + 16384, len(raw)))
    assert out == [GrpcMessage(False, body, raw)]


def test_an_empty_message_and_an_empty_feed_are_both_fine() -> None:
    decoder = GrpcMessageDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(encode_message(b"")) == [GrpcMessage(False, b"", b"\x00\x00\x00\x00\x00")]
    decoder.end_of_stream()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_takes_bytes_bytearray_or_a_memoryview_and_returns_bytes(kind: type) -> None:
    data = encode_message(b"one") + encode_message(b"two") + encode_message(b"three")[:4]
    decoder = GrpcMessageDecoder()
    messages = decoder.feed(kind(data))
    assert [m.data for m in messages] == [b"one", b"two"]
    assert all(type(m.data) is bytes and type(m.raw) is bytes for m in messages)
    assert [m.data for m in decoder.feed(kind(encode_message(b"three")[4:]))] == [b"three"]


def test_the_data_a_message_was_cut_from_can_change_afterwards() -> None:
    buffer = bytearray(encode_message(b"keep me"))
    (message,) = GrpcMessageDecoder().feed(memoryview(buffer))
    buffer[5:] = b"XXXXXXX"
    assert message.data == b"keep me"


# ----------------------------------------------------------------------------------------------- limits


def test_the_default_limit_is_grpcs_4_mib() -> None:
    assert GrpcMessageDecoder().max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 4 * 1024 * 1024


def test_a_declared_length_over_the_limit_fails_on_its_prefix_before_any_body_arrives() -> None:
    decoder = GrpcMessageDecoder(max_message_size=1000)
    with pytest.raises(DecodeError) as error:
        decoder.feed(prefix(0, 1001))
    assert error.value.reason == "message_too_large"
    assert decoder.buffered == 0


def test_a_message_exactly_at_the_limit_is_accepted() -> None:
    decoder = GrpcMessageDecoder(max_message_size=1000)
    (message,) = decoder.feed(encode_message(b"x" * 1000))
    assert len(message.data) == 1000


def test_an_oversized_length_is_caught_even_when_the_prefix_arrives_a_byte_at_a_time() -> None:
    decoder = GrpcMessageDecoder(max_message_size=1000)
    head = prefix(0, 0xFFFFFFFF)
    for byte in head[:4]:
        assert decoder.feed(bytes([byte])) == []
    with pytest.raises(DecodeError, match="message_too_large"):
        decoder.feed(head[4:] + b"body")


def test_a_4_gib_declaration_costs_the_5_bytes_of_its_prefix_not_4_gib() -> None:
    tracemalloc.start()
    try:
        decoder = GrpcMessageDecoder(max_message_size=2**32)
        decoder.feed(prefix(0, 2**32 - 1) + b"a few body bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.buffered == 5 + 16
    assert peak < 64 * 1024


def test_the_buffer_only_grows_with_bytes_received() -> None:
    decoder = GrpcMessageDecoder()
    decoder.feed(prefix(0, DEFAULT_MAX_MESSAGE_SIZE) + b"x" * 10)
    assert decoder.buffered == 15


# ------------------------------------------------------------------------------------------ bad framing


@pytest.mark.parametrize("flag", [2, 0x7F, 0x80, 0xFF])
def test_a_compressed_flag_other_than_0_or_1_is_an_error(flag: int) -> None:
    """0x80 is gRPC-Web's trailer frame: not gRPC over HTTP/2, so not accepted here either."""
    with pytest.raises(DecodeError) as error:
        GrpcMessageDecoder().feed(prefix(flag, 1) + b"x")
    assert error.value.reason == "bad_compressed_flag"


def test_a_bad_flag_after_good_messages_fails_the_feed() -> None:
    decoder = GrpcMessageDecoder()
    with pytest.raises(DecodeError, match="bad_compressed_flag"):
        decoder.feed(encode_message(b"fine") + prefix(9, 0))


def test_a_decoder_that_failed_stays_failed() -> None:
    decoder = GrpcMessageDecoder(max_message_size=10)
    with pytest.raises(DecodeError) as first:
        decoder.feed(prefix(0, 11))
    with pytest.raises(DecodeError) as again:
        decoder.feed(encode_message(b"ok"))
    assert again.value is first.value
    with pytest.raises(DecodeError):
        decoder.end_of_stream()
    assert decoder.buffered == 0


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00\x00", prefix(0, 3), prefix(0, 3) + b"ab"])
def test_a_stream_that_ends_inside_a_message_is_truncated(tail: bytes) -> None:
    decoder = GrpcMessageDecoder()
    assert decoder.feed(encode_message(b"whole") + tail)[0].data == b"whole"
    with pytest.raises(DecodeError) as error:
        decoder.end_of_stream()
    assert error.value.reason == "truncated"


def test_a_stream_that_ends_between_messages_is_complete() -> None:
    decoder = GrpcMessageDecoder()
    decoder.feed(encode_message(b"a") + encode_message(b"b"))
    decoder.end_of_stream()


@settings(max_examples=300, deadline=None)
@given(garbage=st.lists(st.binary(max_size=40), max_size=8))
def test_garbage_only_ever_raises_decode_error(garbage: list[bytes]) -> None:
    decoder = GrpcMessageDecoder(max_message_size=64)
    try:
        for piece in garbage:
            decoder.feed(piece)
        decoder.end_of_stream()
    except DecodeError:
        pass
    assert decoder.buffered <= 64 + 5


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=20), data=st.data())
def test_encoded_messages_decode_to_themselves_however_they_are_split(
    messages: list[tuple[bytes, bool]], data: st.DataObject
) -> None:
    stream = b"".join(encode_message(body, flag) for body, flag in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = GrpcMessageDecoder()
    out = [m for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) for m in decoder.feed(stream[a:b])]
    decoder.end_of_stream()
    assert [(m.data, m.compressed) for m in out] == messages


# ------------------------------------------------------------------------------------------ compression


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_messages_inflate_to_what_was_compressed(encoding: str) -> None:
    body = b"repetitive text " * 100
    (message,) = GrpcMessageDecoder().feed(encode_message(compress(body, encoding), compressed=True))
    assert decompress(message, encoding) == body
    assert decompress(message, encoding.encode()) == body


def test_grpc_deflate_is_the_zlib_format_and_gzip_is_a_gzip_member() -> None:
    body = b"payload"
    assert zlib.decompress(compress(body, "deflate")) == body
    assert gzip.decompress(compress(body, "gzip")) == body


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", b"snappy"])
def test_an_uncompressed_message_is_returned_as_is_whatever_the_encoding(encoding: str | bytes | None) -> None:
    message = GrpcMessage(False, b"plain", encode_message(b"plain"))
    assert decompress(message, encoding) == b"plain"


@pytest.mark.parametrize("encoding", [None, "identity", b"identity"])
def test_the_compressed_flag_without_an_encoding_is_an_error(encoding: str | bytes | None) -> None:
    message = GrpcMessage(True, b"\x1f\x8b", b"")
    with pytest.raises(DecodeError) as error:
        decompress(message, encoding)
    assert error.value.reason == "compressed_without_encoding"


@pytest.mark.parametrize("encoding", ["snappy", "br", "zstd", "x-custom"])
def test_an_encoding_this_codec_does_not_know_is_an_error(encoding: str) -> None:
    with pytest.raises(DecodeError) as error:
        decompress(GrpcMessage(True, b"data", b""), encoding)
    assert error.value.reason == "unknown_encoding"


@pytest.mark.parametrize(
    "data",
    [b"not gzip at all", compress(b"x" * 1000, "gzip")[:-9], compress(b"x", "gzip") + b"trailing"],
    ids=["garbage", "truncated", "trailing-bytes"],
)
def test_a_broken_gzip_message_is_an_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as error:
        decompress(GrpcMessage(True, data, b""), "gzip")
    assert error.value.reason == "bad_compressed"


def test_a_gzip_bomb_stops_at_the_limit_without_allocating_what_it_would_inflate_to() -> None:
    bomb = compress(bytes(200 * 1024 * 1024), "gzip")  # 200 MiB of zeros in about 200 KiB
    message = GrpcMessage(True, bomb, b"")
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as error:
            decompress(message, "gzip", max_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.value.reason == "message_too_large"
    assert peak < 4 * 1024 * 1024


def test_a_message_inflating_to_exactly_the_limit_is_accepted() -> None:
    message = GrpcMessage(True, compress(b"y" * 5000, "deflate"), b"")
    assert decompress(message, "deflate", max_size=5000) == b"y" * 5000
    with pytest.raises(DecodeError, match="message_too_large"):
        decompress(message, "deflate", max_size=4999)
