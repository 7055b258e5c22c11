"""``GoawaySplitter`` takes GOAWAY frames out of an HTTP/2 byte stream (h2 would close the whole connection on
one) and passes every other byte through unchanged, whatever the read boundaries."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http2 import PREFACE, GoawaySplitter, goaway_frame

OTHER_FRAMES = [
    SettingsFrame(0).serialize(),
    HeadersFrame(1, data=b"\x82\x86", flags=["END_HEADERS"]).serialize(),
    PingFrame(0, opaque_data=b"12345678").serialize(),
    DataFrame(1, data=b"x" * 300).serialize(),
]


@pytest.mark.parametrize("step", [1, 2, 3, 8, 9, 10, 16, 17, 64, 100_000])
def test_goaways_are_taken_out_and_everything_else_passes_unchanged(step: int) -> None:
    stream = (
        PREFACE + OTHER_FRAMES[0]
        + GoAwayFrame(0, last_stream_id=7, error_code=2, additional_data=b"bye").serialize()
        + b"".join(OTHER_FRAMES[1:]) + goaway_frame(9)
    )  # fmt: skip
    splitter = GoawaySplitter(expect_preface=True)
    passed, goaways = b"", []
    for start in range(0, len(stream), step):
        data, found = splitter.feed(stream[start : start + step])
        passed += data
        goaways += found
    assert passed == PREFACE + b"".join(OTHER_FRAMES)
    assert [(g.last_stream_id, g.error_code, g.debug_data) for g in goaways] == [(7, 2, b"bye"), (9, 0, b"")]


def test_our_goaway_frame_is_what_hyperframe_reads() -> None:
    frame = GoAwayFrame(0)
    frame.parse_body(memoryview(goaway_frame(12, 0xB)[9:]))
    assert (frame.last_stream_id, frame.error_code) == (12, 0xB)


def test_a_goaway_of_impossible_size_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(DecodeError):
        GoawaySplitter(expect_preface=False).feed(b"\xff\xff\xff\x07\x00\x00\x00\x00\x00")
