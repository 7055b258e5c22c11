"""Read top-level fields straight from raw BSON bytes, without decoding the document.

A stats filter needs a command's name, ``$db`` and collection for every message; ``bson.decode`` of the
whole body would cost tens of microseconds for a large ``insert``. These helpers walk the top-level
element headers only (type byte, name, and the value's extent), skipping embedded documents by their
length prefix. They validate what they walk and raise ``DecodeError("invalid_bson")`` on anything
malformed, so the decoder can reuse them to check a body's structure.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bson

from meshproxy.codecs.errors import DecodeError

_INT32 = int.from_bytes

# Value sizes of fixed-width BSON types (BSON spec): double, undefined, ObjectId, bool, UTC datetime,
# null, int32, timestamp, int64, decimal128, min key, max key.
_FIXED_SIZE = {
    0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
    0x7F: 0, 0xFF: 0,
}
_STRING_LIKE = frozenset({0x02, 0x0D, 0x0E})  # string, JavaScript code, symbol: int32 length + bytes
_DOCUMENT_LIKE = frozenset({0x03, 0x04, 0x0F})  # document, array, code with scope: int32 total length

STRING = 0x02
DOCUMENT = 0x03
ARRAY = 0x04
INT32 = 0x10
INT64 = 0x12
DOUBLE = 0x01
BOOLEAN = 0x08


def _invalid(detail: str) -> DecodeError:
    return DecodeError("invalid_bson", detail)


def check_document(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Check a document's length prefix and terminator at ``start``; return the offset just past it."""
    limit = len(data) if end is None else end
    if limit - start < 5:
        raise _invalid("document shorter than 5 bytes")
    length = _INT32(data[start : start + 4], "little", signed=True)
    if length < 5 or start + length > limit:
        raise _invalid(f"document length {length} does not fit in {limit - start} bytes")
    if data[start + length - 1] != 0:
        raise _invalid("document is not NUL-terminated")
    return start + length


def value_end(data: bytes, kind: int, start: int, end: int) -> int:
    """Offset just past a value of BSON type ``kind`` starting at ``start`` (bounded by ``end``)."""
    size = _FIXED_SIZE.get(kind)
    if size is not None:
        stop = start + size
    elif kind in _STRING_LIKE:
        if end - start < 5:
            raise _invalid("truncated string")
        length = _INT32(data[start : start + 4], "little", signed=True)
        stop = start + 4 + length
        if length < 1 or stop > end or data[stop - 1] != 0:
            raise _invalid("bad string length")
    elif kind in _DOCUMENT_LIKE:
        stop = check_document(data, start, end)
    elif kind == 0x05:  # binary: int32 length, subtype byte, bytes
        if end - start < 5:
            raise _invalid("truncated binary")
        length = _INT32(data[start : start + 4], "little", signed=True)
        if length < 0:
            raise _invalid("negative binary length")
        stop = start + 5 + length
    elif kind == 0x0B:  # regular expression: two cstrings
        first = data.find(b"\x00", start, end)
        second = data.find(b"\x00", first + 1, end) if first >= 0 else -1
        if second < 0:
            raise _invalid("truncated regular expression")
        stop = second + 1
    elif kind == 0x0C:  # DBPointer: string + 12-byte ObjectId
        stop = value_end(data, STRING, start, end) + 12
    else:
        raise _invalid(f"unknown element type 0x{kind:02x}")
    if stop > end:
        raise _invalid("element runs past the end of its document")
    return stop


def elements(data: bytes, start: int = 0) -> Iterator[tuple[int, str, int, int]]:
    """Top-level elements of the document at ``start``: (type, name, value start, value end)."""
    doc_end = check_document(data, start) - 1  # offset of the terminating NUL
    pos = start + 4
    while pos < doc_end:
        kind = data[pos]
        name_end = data.find(b"\x00", pos + 1, doc_end)
        if name_end < 0:
            raise _invalid("element name is not terminated")
        try:
            name = data[pos + 1 : name_end].decode()
        except UnicodeDecodeError:
            raise _invalid("element name is not UTF-8") from None
        value_start = name_end + 1
        stop = value_end(data, kind, value_start, doc_end)
        yield kind, name, value_start, stop
        pos = stop
    if pos != doc_end:
        raise _invalid("elements overrun the document")


def validate(data: bytes) -> None:
    """Check the document's framing and every top-level element's extent (not nested contents)."""
    count_elements(data)


def count_elements(data: bytes, start: int = 0) -> int:
    """How many elements the document (or array) at ``start`` holds, checking each one's extent.

    A tight loop rather than ``elements()``: the decoder runs it on every large command body, so it neither
    decodes names nor builds tuples (about 0.3 µs an element here).
    """
    end = check_document(data, start) - 1
    pos = start + 4
    find = data.find
    fixed = _FIXED_SIZE
    count = 0
    while pos < end:
        kind = data[pos]
        name_end = find(b"\x00", pos + 1, end)
        if name_end < 0:
            raise _invalid("element name is not terminated")
        pos = name_end + 1
        size = fixed.get(kind)
        if size is not None:
            pos += size
            if pos > end:
                raise _invalid("element runs past the end of its document")
        else:
            pos = value_end(data, kind, pos, end)
        count += 1
    if pos != end:
        raise _invalid("elements overrun the document")
    return count


def _string_value(data: bytes, start: int) -> str:
    length = _INT32(data[start : start + 4], "little", signed=True)
    try:
        return data[start + 4 : start + 3 + length].decode()
    except UnicodeDecodeError:
        raise _invalid("string value is not UTF-8") from None


def first_key(data: bytes) -> str:
    """Name of the first element: a command's name. Costs one ``find`` and a short decode."""
    if len(data) < 6 or data[4] == 0:
        raise _invalid("empty document has no first key")
    name_end = data.find(b"\x00", 5)
    if name_end < 0:
        raise _invalid("first element name is not terminated")
    try:
        return data[5:name_end].decode()
    except UnicodeDecodeError:
        raise _invalid("element name is not UTF-8") from None


def first_value_if_string(data: bytes) -> str | None:
    """The first element's value when it is a string (``{find: "users"}`` -> ``users``), else None."""
    if len(data) < 6 or data[4] != STRING:
        return None
    name_end = data.find(b"\x00", 5)
    if name_end < 0:
        raise _invalid("first element name is not terminated")
    value_end(data, STRING, name_end + 1, len(data) - 1)
    return _string_value(data, name_end + 1)


def _find_element(data: bytes, key: str) -> tuple[int, int, int] | None:
    """(type, value start, value end) of the top-level element named ``key``, or None.

    Compares raw name bytes while walking, so no name is decoded. No shortcut such as ``rfind`` of the
    element's bytes: a string value may contain NUL bytes, so a look-alike of a ``$db`` element inside
    another value would be taken for the real field; only a walk knows where elements begin.
    """
    target = key.encode()
    size_of_target = len(target)
    end = check_document(data) - 1
    pos = 4
    find = data.find
    fixed = _FIXED_SIZE
    while pos < end:
        kind = data[pos]
        name_end = find(b"\x00", pos + 1, end)
        if name_end < 0:
            raise _invalid("element name is not terminated")
        start = name_end + 1
        size = fixed.get(kind)
        if size is not None:
            stop = start + size
            if stop > end:
                raise _invalid("element runs past the end of its document")
        elif kind == STRING and end - start >= 5:
            # Inlined for the common case; value_end() has the same checks.
            stop = start + 4 + _INT32(data[start : start + 4], "little", signed=True)
            if stop <= start + 4 or stop > end or data[stop - 1] != 0:
                raise _invalid("bad string length")
        else:
            stop = value_end(data, kind, start, end)
        if name_end - pos - 1 == size_of_target and data[pos + 1 : name_end] == target:
            return kind, start, stop
        pos = stop
    if pos != end:
        raise _invalid("elements overrun the document")
    return None


def top_level_string(data: bytes, key: str) -> str | None:
    """A top-level string field, or None when absent or not a string (a short walk of element headers)."""
    found = _find_element(data, key)
    if found is None or found[0] != STRING:
        return None
    return _string_value(data, found[1])


def top_level_document(data: bytes, key: str) -> bytes | None:
    """The raw bytes of a top-level embedded document or array, or None."""
    found = _find_element(data, key)
    if found is None or found[0] not in (DOCUMENT, ARRAY):
        return None
    return data[found[1] : found[2]]


_OPTIONS: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(
    datetime_conversion=bson.DatetimeConversion.DATETIME_AUTO
)
"""Dates outside Python's datetime range are valid BSON: keep them (as ``DatetimeMS``), don't fail."""


def decode(data: bytes) -> dict[str, Any]:
    """A full decode with pymongo's bson; any failure becomes ``DecodeError("invalid_bson")``."""
    try:
        document: dict[str, Any] = bson.decode(data, _OPTIONS)
    except Exception as exc:  # bson raises InvalidBSON and, for some inputs, other errors
        raise _invalid(str(exc)) from None
    return document
