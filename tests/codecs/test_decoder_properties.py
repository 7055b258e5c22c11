"""Properties of the decoder over recorded streams (hypothesis).

However the network splits a stream, the same messages come out; garbage only ever raises ``DecodeError``
and leaves the decoder poisoned; a stream cut short is just fewer messages, never an error.
"""

from __future__ import annotations

from conftest import SCENARIOS, _checksummed, _recorded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, OpMsg, compress_message

STREAMS = {
    f"{scenario}.{direction}": _recorded(scenario, direction)
    for scenario in SCENARIOS
    for direction in ("c2s", "s2c")
}
EXPECTED = {name: [m.raw for m in MongoDecoder().feed(data)] for name, data in STREAMS.items()}
# A stream with every kind of framing the codec knows: compressed, checksummed and legacy messages.
_find_getmore = MongoDecoder().feed(STREAMS["find_getmore.c2s"])
MIXED = (
    STREAMS["legacy_handshake.c2s"]
    + b"".join(compress_message(m, c) for m, c in zip(_find_getmore, [0, 1, 2, 3, 2, 1, 3], strict=True))
    + b"".join(_checksummed(m.raw) for m in _find_getmore if isinstance(m, OpMsg))
)
STREAMS["mixed"] = MIXED
EXPECTED["mixed"] = [m.raw for m in MongoDecoder().feed(MIXED)]

stream_names = st.sampled_from(sorted(STREAMS))
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _feed_in_pieces(decoder: MongoDecoder, data: bytes, cuts: list[int]) -> list[MongoMessage]:
    messages: list[MongoMessage] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        messages += decoder.feed(data[previous:cut])
        previous = cut
    return messages


@PROPERTY
@given(name=stream_names, data=st.data())
def test_any_split_of_a_recorded_stream_yields_the_same_messages(name: str, data: st.DataObject) -> None:
    stream = STREAMS[name]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    decoder = MongoDecoder()
    messages = _feed_in_pieces(decoder, stream, cuts)
    assert [m.raw for m in messages] == EXPECTED[name]
    assert decoder.buffered == 0


@settings(max_examples=5, deadline=None)
@given(name=stream_names)
def test_a_stream_fed_one_byte_at_a_time_yields_the_same_messages(name: str) -> None:
    stream = STREAMS[name][:6000]
    decoder = MongoDecoder()
    messages = _feed_in_pieces(decoder, stream, list(range(len(stream))))
    expected_count = len(MongoDecoder().feed(stream))
    assert [m.raw for m in messages] == EXPECTED[name][:expected_count]


@PROPERTY
@given(garbage=st.binary(min_size=0, max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_raise_only_decode_error_and_poison_the_decoder(garbage: bytes, cuts: list[int]) -> None:
    decoder = MongoDecoder(max_message_size=1 << 20)
    try:
        _feed_in_pieces(decoder, garbage, [c for c in cuts if c <= len(garbage)])
    except DecodeError:
        for _ in range(2):
            try:
                decoder.feed(b"\x10\x00\x00\x00")
            except DecodeError:
                continue
            raise AssertionError("a poisoned decoder accepted more bytes") from None
    else:
        assert decoder.buffered <= len(garbage)


@PROPERTY
@given(name=stream_names, data=st.data())
def test_recorded_messages_with_random_bytes_overwritten_raise_only_decode_error(
    name: str, data: st.DataObject
) -> None:
    stream = bytearray(STREAMS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] = data.draw(st.integers(0, 255))
    decoder = MongoDecoder()
    try:
        decoder.feed(bytes(stream))
    except DecodeError:
        try:
            decoder.feed(b"")
        except DecodeError:
            return
        raise AssertionError("a poisoned decoder accepted more bytes") from None


@PROPERTY
@given(name=stream_names, data=st.data())
def test_a_truncated_stream_never_raises_and_completes_when_the_rest_arrives(
    name: str, data: st.DataObject
) -> None:
    stream = STREAMS[name]
    cut = data.draw(st.integers(0, len(stream)))
    decoder = MongoDecoder()
    first = decoder.feed(stream[:cut])
    assert [m.raw for m in first] == EXPECTED[name][: len(first)]
    assert sum(len(m.raw) for m in first) + decoder.buffered == cut
    rest = decoder.feed(stream[cut:])
    assert [m.raw for m in first + rest] == EXPECTED[name]


def test_the_mixed_stream_holds_every_framing() -> None:
    kinds = {type(m).__name__ for m in MongoDecoder().feed(MIXED)}
    assert kinds == {"OpQuery", "OpMsg", "OpCompressed"}
    assert any(isinstance(m, OpMsg) and m.checksum is not None for m in MongoDecoder().feed(MIXED))
