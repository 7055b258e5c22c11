"""The HTTP/2 frame router: GOAWAY frames (h2 would close the whole connection on one) and DATA of fast streams
(the proxy's DATA fast path) come out; every other byte passes through unchanged and in order, whatever the
read boundaries."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.http2 import PREFACE, FrameRouter, Goaway, goaway_frame

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
    router = FrameRouter(expect_preface=True)
    passed, goaways = b"", []
    for start in range(0, len(stream), step):
        for item in router.feed(stream[start : start + step]):
            if isinstance(item, Goaway):
                goaways.append(item)
            else:
                assert isinstance(item, bytes)
                passed += item
    assert passed == PREFACE + b"".join(OTHER_FRAMES)
    assert [(g.last_stream_id, g.error_code, g.debug_data) for g in goaways] == [(7, 2, b"bye"), (9, 0, b"")]


def test_our_goaway_frame_is_what_hyperframe_reads() -> None:
    frame = GoAwayFrame(0)
    frame.parse_body(memoryview(goaway_frame(12, 0xB)[9:]))
    assert (frame.last_stream_id, frame.error_code) == (12, 0xB)


def test_a_goaway_of_impossible_size_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(DecodeError):
        FrameRouter(expect_preface=False).feed(b"\xff\xff\xff\x07\x00\x00\x00\x00\x00")


@pytest.mark.parametrize("step", [1, 4, 9, 10, 13, 100_000])
def test_data_on_fast_streams_bypasses_h2_and_everything_else_reaches_it_in_order(step: int) -> None:
    from meshproxy.codecs.http2 import FastData, FrameRouter

    fast_data = DataFrame(3, data=b"0123456789").serialize()
    fast_end = DataFrame(3, data=b"last", flags=["END_STREAM"]).serialize()
    slow_data = DataFrame(5, data=b"other stream").serialize()  # stream 5 is not fast: h2's
    padded = DataFrame(3, data=b"pad", pad_length=4, flags=["PADDED"]).serialize()  # padded: always h2's
    stream = OTHER_FRAMES[0] + fast_data + slow_data + padded + fast_end + OTHER_FRAMES[2]
    router = FrameRouter(expect_preface=False, fast={3})
    items = []
    for start in range(0, len(stream), step):
        items += router.feed(stream[start : start + step])
    to_h2 = b"".join(i for i in items if isinstance(i, bytes))
    assert to_h2 == OTHER_FRAMES[0] + slow_data + padded + OTHER_FRAMES[2]
    fast = [i for i in items if isinstance(i, FastData)]
    assert b"".join(i.data for i in fast) == b"0123456789last"
    assert {i.stream_id for i in fast} == {3}
    assert [i.end_stream for i in fast if i.end_stream] == [True]
    assert fast[-1].end_stream  # END_STREAM comes with the last piece of the last frame


def test_the_frames_the_router_writes_are_what_hyperframe_reads() -> None:
    from hyperframe.frame import Frame, WindowUpdateFrame

    from meshproxy.codecs.http2 import end_stream_frame, window_update_frame

    frame, length = Frame.parse_frame_header(memoryview(end_stream_frame(7)[:9]))
    assert (type(frame).__name__, frame.stream_id, "END_STREAM" in frame.flags, length) == ("DataFrame", 7, True, 0)
    update, _ = Frame.parse_frame_header(memoryview(window_update_frame(9, 65536)[:9]))
    assert isinstance(update, WindowUpdateFrame)
    update.parse_body(memoryview(window_update_frame(9, 65536)[9:]))
    assert (update.stream_id, update.window_increment) == (9, 65536)
