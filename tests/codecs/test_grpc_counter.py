"""``GrpcMessageCounter``: the proxy counts messages without keeping them, and counts what the decoder would."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from meshproxy.codecs.grpc import GrpcMessageCounter, GrpcMessageDecoder, encode_message


@given(
    messages=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=30),
)
def test_any_split_of_a_stream_counts_the_messages_the_decoder_finds(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    counter = GrpcMessageCounter()
    decoder = GrpcMessageDecoder()
    decoded = []
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        counter.feed(stream[start:end])
        decoded += decoder.feed(stream[start:end])
    assert counter.count == len(messages) == len(decoded)
    assert counter.remaining == 0
    assert counter.prefix == b""


def test_a_huge_declared_message_is_skipped_not_buffered() -> None:
    counter = GrpcMessageCounter()
    counter.feed(b"\x00\xff\xff\xff\xff" + b"x" * 1000)
    assert (counter.count, counter.remaining, counter.prefix) == (1, 0xFFFFFFFF - 1000, b"")


def test_a_prefix_split_byte_by_byte_is_held_until_complete() -> None:
    counter = GrpcMessageCounter()
    for byte in encode_message(b"abc")[:4]:
        counter.feed(bytes([byte]))
    assert (counter.count, counter.prefix) == (0, b"\x00\x00\x00\x00")
    counter.feed(b"\x03abc")
    assert (counter.count, counter.remaining) == (1, 0)
