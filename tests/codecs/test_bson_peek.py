"""Reading top-level fields straight from raw BSON (``_bson_peek``), checked against pymongo's own
``bson.encode`` / ``bson.decode`` of the same documents."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import _bson_peek

FIND: dict[str, Any] = {
    "find": "users",
    "filter": {"age": {"$gt": 30}, "$db": "nested"},
    "limit": 5,
    "lsid": {"id": bson.Binary(b"\x01" * 16, 4)},
    "$db": "app",
}


def test_first_key_and_string_value_of_a_command_are_its_name_and_collection() -> None:
    raw = bson.encode(FIND)
    assert _bson_peek.first_key(raw) == "find"
    assert _bson_peek.first_value_if_string(raw) == "users"


def test_first_value_that_is_not_a_string_gives_none() -> None:
    assert _bson_peek.first_value_if_string(bson.encode({"getMore": bson.Int64(7), "$db": "app"})) is None


def test_db_is_found_at_top_level_and_never_in_a_nested_document() -> None:
    raw = bson.encode(FIND)
    assert _bson_peek.top_level_string(raw, "$db") == "app"
    assert _bson_peek.top_level_string(bson.encode({"find": "c", "filter": {"$db": "nested"}}), "$db") is None


def test_a_db_look_alike_inside_a_string_value_is_not_taken_for_the_db_field() -> None:
    """BSON strings may hold NUL bytes, so the bytes of a ``$db`` element can appear inside a value."""
    spoof = "x\x02$db\x00\x05\x00\x00\x00evil"
    raw = bson.encode({"find": "c", "comment": spoof})
    assert _bson_peek.top_level_string(raw, "$db") is None
    assert _bson_peek.top_level_string(bson.encode({"find": "c", "$db": "app", "comment": spoof}), "$db") == "app"


def test_top_level_string_of_a_non_string_field_is_none() -> None:
    assert _bson_peek.top_level_string(bson.encode(FIND), "limit") is None


def test_top_level_document_returns_the_exact_embedded_bytes() -> None:
    raw = bson.encode(FIND)
    embedded = _bson_peek.top_level_document(raw, "filter")
    assert embedded is not None
    assert bson.decode(embedded) == FIND["filter"]
    assert _bson_peek.top_level_document(raw, "find") is None
    assert _bson_peek.top_level_document(raw, "absent") is None


def test_element_walk_names_every_top_level_field_with_its_value_bounds() -> None:
    raw = bson.encode(FIND)
    walked = [(name, kind) for kind, name, _, _ in _bson_peek.elements(raw)]
    assert walked == [("find", 0x02), ("filter", 0x03), ("limit", 0x10), ("lsid", 0x03), ("$db", 0x02)]
    for kind, name, start, stop in _bson_peek.elements(raw):
        if kind == 0x10:
            assert int.from_bytes(raw[start:stop], "little") == FIND[name]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw[:-1],  # length prefix beyond the bytes
        lambda raw: raw[:-1] + b"\x01",  # not NUL-terminated
        lambda raw: raw[:4] + b"\x99" + raw[5:],  # unknown element type
        lambda raw: raw[:10] + b"\xff\xff\xff\x7f" + raw[14:],  # string length runs past the end
    ],
    ids=["short", "unterminated", "unknown_type", "string_overrun"],
)
def test_malformed_structure_is_invalid_bson(mangle: Any) -> None:
    raw = mangle(bson.encode(FIND))
    with pytest.raises(DecodeError) as info:
        _bson_peek.validate(raw)
    assert info.value.reason == "invalid_bson"
    with pytest.raises(DecodeError):
        _bson_peek.top_level_string(raw, "$db")


@given(st.binary(max_size=64))
def test_peeking_at_garbage_raises_only_decode_error(data: bytes) -> None:
    for peek in (
        lambda: _bson_peek.first_key(data),
        lambda: _bson_peek.first_value_if_string(data),
        lambda: _bson_peek.top_level_string(data, "$db"),
        lambda: _bson_peek.top_level_document(data, "filter"),
        lambda: _bson_peek.validate(data),
        lambda: _bson_peek.decode(data),
    ):
        reason = "invalid_bson"
        try:
            peek()
        except DecodeError as error:
            reason = error.reason
        assert reason == "invalid_bson"


_KEYS = st.text(min_size=1).filter(lambda k: "\x00" not in k)


@given(st.dictionaries(_KEYS, st.text() | st.integers(-(2**31), 2**31 - 1)))
def test_top_level_strings_agree_with_a_full_decode(document: dict[str, Any]) -> None:
    raw = bson.encode(document)
    decoded = bson.decode(raw)
    for key, value in decoded.items():
        expected = value if isinstance(value, str) else None
        assert _bson_peek.top_level_string(raw, key) == expected
    if decoded:
        assert _bson_peek.first_key(raw) == next(iter(decoded))
