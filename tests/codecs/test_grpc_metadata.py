"""gRPC's header and trailer fields, as PROTOCOL-HTTP2 and the HTTP-to-gRPC status table define them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.grpc import (
    GrpcStatus,
    decode_binary_header,
    decode_grpc_message,
    encode_binary_header,
    encode_grpc_message,
    format_timeout,
    http_status_to_grpc,
    is_grpc_content_type,
    parse_path,
    parse_timeout,
    parse_timeout_ns,
    status_from_trailers,
)

# ---------------------------------------------------------------------------------------------- :path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/pkg.Service/Method", ("pkg.Service", "Method")),
        (b"/grpc.health.v1.Health/Check", ("grpc.health.v1.Health", "Check")),
        (b"/Greeter/SayHello", ("Greeter", "SayHello")),
        (b"/a.b.C/lower_case_method", ("a.b.C", "lower_case_method")),
    ],
)
def test_the_path_names_the_service_and_the_method(path: bytes, expected: tuple[str, str]) -> None:
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [b"", b"/", b"//", b"pkg.Service/Method", b"/pkg.Service", b"/pkg.Service/", b"//Method",
     b"/pkg.Service/Method/extra", b"/pkg.Service/Method?x=1", b"/pkg.Service/\xff\xfe"],
)
def test_a_path_that_is_not_slash_service_slash_method_is_bad(path: bytes) -> None:
    with pytest.raises(DecodeError) as error:
        parse_path(path)
    assert error.value.reason == "bad_path"


# ------------------------------------------------------------------------------------------ grpc-timeout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"100m", 0.1),
        (b"250u", 0.00025),
        (b"1n", 1e-9),
        (b"99999999S", 99999999.0),
        (b"99999999H", 99999999 * 3600.0),
        (b"00000001S", 1.0),
        (b"4999947u", 4.999947),
        (b"0m", 0.0),
    ],
)
def test_grpc_timeout_is_up_to_8_digits_and_a_unit(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == seconds


def test_grpc_timeout_in_nanoseconds_is_exact() -> None:
    assert parse_timeout_ns(b"100m") == 100_000_000
    assert parse_timeout_ns(b"7n") == 7
    assert parse_timeout_ns(b"99999999H") == 99999999 * 3600 * 10**9


@pytest.mark.parametrize(
    "value",
    [
        b"",            # empty
        b"S",           # no digits
        b"100",         # no unit
        b"123456789S",  # nine digits
        b"1.5S",        # no decimal point
        b"-1S",         # no sign
        b"+1S",
        b" 1S",         # no whitespace
        b"1S ",
        b"1 S",
        b"1s",          # units are case-sensitive: s is not a unit
        b"1h",
        b"1x",
        b"1SS",
        b"1S1",
        b"\xd9\xa1S",   # a non-ASCII digit
    ],
)
def test_anything_else_is_a_bad_grpc_timeout(value: bytes) -> None:
    with pytest.raises(DecodeError) as error:
        parse_timeout(value)
    assert error.value.reason == "bad_timeout"
    with pytest.raises(DecodeError):
        parse_timeout_ns(value)


def test_m_is_minutes_and_lower_case_m_is_milliseconds() -> None:
    assert parse_timeout(b"1M") == 60.0
    assert parse_timeout(b"1m") == 0.001


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (0.1, b"100m"),
        (90, b"90S"),
        (120, b"2M"),
        (7200, b"2H"),
        (1e-9, b"1n"),
        (4.999947, b"4999947u"),
        (0.123456789, b"123457u"),  # 123456789n has 9 digits: rounded up in microseconds
        (0, b"1n"),
        (-3, b"1n"),
        (1e30, b"99999999H"),
    ],
)
def test_format_timeout_picks_the_coarsest_exact_unit_or_rounds_up(seconds: float, value: bytes) -> None:
    assert format_timeout(seconds) == value


@settings(max_examples=500, deadline=None)
@given(seconds=st.floats(min_value=1e-9, max_value=3e11))
def test_a_formatted_timeout_parses_back_to_no_less_and_barely_more(seconds: float) -> None:
    value = format_timeout(seconds)
    assert len(value) <= 9
    nanos = round(seconds * 1e9)
    assert nanos <= parse_timeout_ns(value) <= nanos * (1 + 1e-5) + 1  # 8 digits: a unit step costs < 1e-5


# --------------------------------------------------------------------------------- status and message


def test_there_are_17_status_codes_with_their_canonical_names() -> None:
    assert len(GrpcStatus) == 17
    assert [s.value for s in GrpcStatus] == list(range(17))
    assert GrpcStatus(4).name == "DEADLINE_EXCEEDED"
    assert GrpcStatus(16).name == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("trailers", "expected"),
    [
        ([(b"grpc-status", b"0")], (GrpcStatus.OK, "")),
        ([(b"grpc-status", b"5"), (b"grpc-message", b"no such user")], (GrpcStatus.NOT_FOUND, "no such user")),
        ([(b"grpc-status", b"9"), (b"grpc-message", b"%C3%BCn%C3%AFc%C3%B8d%C3%A9 %E2%9C%93")],
         (GrpcStatus.FAILED_PRECONDITION, "ünïcødé ✓")),
        ([(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12")],
         (GrpcStatus.UNIMPLEMENTED, "")),
        ([(b"grpc-status", b"42"), (b"grpc-message", b"from the future")], (42, "from the future")),
        ([(b":status", b"404"), (b"grpc-status", b"5")], (GrpcStatus.NOT_FOUND, "")),  # grpc-status wins
    ],
)
def test_status_and_message_come_from_grpc_status_and_grpc_message(
    trailers: list[tuple[bytes, bytes]], expected: tuple[int, str]
) -> None:
    assert status_from_trailers(trailers) == expected


def test_a_known_code_comes_back_as_a_grpc_status_member() -> None:
    code, _ = status_from_trailers([(b"grpc-status", b"14")])
    assert code is GrpcStatus.UNAVAILABLE


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([(b":status", b"503"), (b"content-type", b"text/html")], GrpcStatus.UNAVAILABLE),
        ([(b":status", b"401")], GrpcStatus.UNAUTHENTICATED),
        ([(b":status", b"200")], GrpcStatus.UNKNOWN),
        ([], GrpcStatus.UNKNOWN),
        ([(b"grpc-status", b"")], GrpcStatus.UNKNOWN),
        ([(b"grpc-status", b"OK")], GrpcStatus.UNKNOWN),
        ([(b"grpc-status", b"-1")], GrpcStatus.UNKNOWN),
    ],
)
def test_a_missing_or_unreadable_status_is_synthesised_with_a_reason(
    headers: list[tuple[bytes, bytes]], code: GrpcStatus
) -> None:
    got, message = status_from_trailers(headers)
    assert got == code
    assert message


def test_a_proxy_reply_without_grpc_status_keeps_its_grpc_message_if_any() -> None:
    assert status_from_trailers([(b":status", b"502"), (b"grpc-message", b"upstream%20reset")]) == (
        GrpcStatus.UNAVAILABLE,
        "upstream reset",
    )


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain words", "plain words"),
        (b"100%25 sure", "100% sure"),
        (b"%e2%9c%93", "✓"),              # lower-case hex is read too
        (b"100%", "100%"),                # a lone % is kept
        (b"%G1 and %4", "%G1 and %4"),    # so is an escape that is not two hex digits
        (b"%FF", "\ufffd"),               # bytes that are not UTF-8 become U+FFFD; never an error
        (b"%C3", "\ufffd"),
    ],
)
def test_grpc_message_decoding_never_fails_and_keeps_broken_escapes(raw: bytes, text: str) -> None:
    assert decode_grpc_message(raw) == text


def test_encoding_escapes_percent_and_everything_outside_printable_ascii() -> None:
    assert encode_grpc_message("100% ünïcødé ✓") == b"100%25 %C3%BCn%C3%AFc%C3%B8d%C3%A9 %E2%9C%93"
    assert encode_grpc_message("tab\there\nnewline") == b"tab%09here%0Anewline"
    assert encode_grpc_message("ascii stays ~!") == b"ascii stays ~!"


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_any_unicode_message_survives_a_percent_round_trip(text: str) -> None:
    encoded = encode_grpc_message(text)
    assert all(0x20 <= byte <= 0x7E for byte in encoded)
    assert decode_grpc_message(encoded) == text


# -------------------------------------------------------------------------------------- HTTP status map


@pytest.mark.parametrize(
    ("http", "grpc"),
    [
        (400, GrpcStatus.INTERNAL),
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.UNIMPLEMENTED),
        (429, GrpcStatus.UNAVAILABLE),
        (431, GrpcStatus.INTERNAL),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.UNAVAILABLE),
        (200, GrpcStatus.UNKNOWN),  # a true OK carries grpc-status
        (500, GrpcStatus.UNKNOWN),
        (415, GrpcStatus.UNKNOWN),
        (302, GrpcStatus.UNKNOWN),
    ],
)
def test_http_statuses_map_to_grpc_codes_per_the_spec_table(http: int, grpc: GrpcStatus) -> None:
    assert http_status_to_grpc(http) == grpc


# ---------------------------------------------------------------------------------------- content-type


@pytest.mark.parametrize(
    "value",
    [b"application/grpc", b"application/grpc+proto", b"application/grpc+json", b"application/grpc+thrift",
     b"application/grpc;charset=utf-8", b"application/grpc+proto; x=y", b"Application/GRPC", b" application/grpc "],
)
def test_grpc_content_types_are_application_grpc_with_optional_suffix_or_parameters(value: bytes) -> None:
    assert is_grpc_content_type(value)


@pytest.mark.parametrize(
    "value",
    [b"application/grpc-web", b"application/grpc-web+proto", b"application/grpc-web-text", b"application/grpcx",
     b"application/json", b"text/html", b"", b"application/grp"],
)
def test_grpc_web_and_everything_else_are_not_grpc(value: bytes) -> None:
    assert not is_grpc_content_type(value)


# ----------------------------------------------------------------------------------- binary metadata


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        (b"AAEC/v8=", [b"\x00\x01\x02\xfe\xff"]),   # padded
        (b"AAEC/v8", [b"\x00\x01\x02\xfe\xff"]),    # unpadded: must be accepted too
        (b"YQ,YmI=, YmJi", [b"a", b"bb", b"bbb"]),  # repeated values joined by commas
        (b"\x00\x01\x02,", [b"\x01\x02,"]),         # grpc core's true binary: NUL then raw bytes
        (b"", [b""]),
    ],
)
def test_binary_metadata_values_are_base64_padded_or_not(value: bytes, decoded: list[bytes]) -> None:
    assert decode_binary_header(value) == decoded


def test_binary_metadata_is_sent_unpadded_and_bad_base64_is_an_error() -> None:
    assert encode_binary_header(b"\x00\x01\x02\xfe\xff") == b"AAEC/v8"
    with pytest.raises(DecodeError, match="bad_binary_header"):
        decode_binary_header(b"not*base64")
