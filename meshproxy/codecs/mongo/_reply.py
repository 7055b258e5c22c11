"""What a reply says, read from its raw BSON without decoding its documents.

Stats, access logs and outlier detection need the same few facts of every reply: did it succeed, with which
error, how many documents came back, which cursor is open. Reading them by walking top-level element
headers costs a few microseconds even for a reply carrying a large batch, where ``bson.decode`` would cost
a decode of every document.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from meshproxy.codecs.mongo import _bson_peek
from meshproxy.codecs.mongo._bson_peek import ARRAY, BOOLEAN, DOCUMENT, DOUBLE, INT32, INT64, STRING
from meshproxy.codecs.mongo._messages import (
    REPLY_CURSOR_NOT_FOUND,
    REPLY_QUERY_FAILURE,
    OpCompressed,
    OpMsg,
    OpReply,
    PlainMessage,
)

_CURSOR_NOT_FOUND = 43


class ReplySummary(NamedTuple):
    """What a reply says. A tuple, not a dataclass: one is built for every reply the proxy sees."""

    ok: bool
    code: int | None
    code_name: str | None
    errmsg: str | None
    cursor_id: int | None
    """The cursor a reply leaves open (0 when exhausted), None when the reply is not about a cursor."""
    num_docs: int
    """Documents returned: a cursor batch's length, or OP_REPLY's numberReturned."""
    cursor_not_found: bool
    query_failure: bool
    write_errors: tuple[tuple[int | None, str | None], ...]
    """(code, codeName) of each ``writeErrors`` entry of a write command's reply."""


def _number(data: bytes, kind: int, start: int) -> float | int | None:
    if kind == DOUBLE:
        return float(struct.unpack_from("<d", data, start)[0])
    if kind == INT32:
        return int(struct.unpack_from("<i", data, start)[0])
    if kind == INT64:
        return int(struct.unpack_from("<q", data, start)[0])
    if kind == BOOLEAN:
        return int(data[start])
    return None


def _string(data: bytes, start: int, stop: int) -> str:
    return data[start + 4 : stop - 1].decode(errors="replace")


def _cursor(data: bytes) -> tuple[int | None, int]:
    cursor_id: int | None = None
    num_docs = 0
    for kind, name, start, stop in _bson_peek.elements(data):
        if name == "id" and kind in (INT64, INT32):
            value = _number(data, kind, start)
            cursor_id = int(value) if value is not None else None
        elif name in ("firstBatch", "nextBatch") and kind == ARRAY:
            num_docs = _bson_peek.count_elements(data[start:stop])
    return cursor_id, num_docs


def _write_errors(data: bytes) -> tuple[tuple[int | None, str | None], ...]:
    errors = []
    for kind, _, start, stop in _bson_peek.elements(data):
        if kind != DOCUMENT:
            continue
        entry = data[start:stop]
        code: int | None = None
        code_name: str | None = None
        for k, name, s, e in _bson_peek.elements(entry):
            if name == "code":
                value = _number(entry, k, s)
                code = int(value) if value is not None else None
            elif name == "codeName" and k == STRING:
                code_name = _string(entry, s, e)
        errors.append((code, code_name))
    return tuple(errors)


SMALL_REPLY = 32 * 1024
"""Below this size pymongo's C decoder reads a whole reply faster than a Python walk of its elements
(measured: 100 small documents, decode 19 µs vs walk 35 µs); above it, decoding costs grow with every
byte of every document while the walk only touches element headers."""


def _summary_from_dict(document: dict[str, Any]) -> ReplySummary:
    get = document.get
    cursor = get("cursor")
    cursor_id: int | None = None
    num_docs = 0
    if type(cursor) is dict:
        raw_id = cursor.get("id")
        if isinstance(raw_id, int):  # bson gives Int64, an int subclass
            cursor_id = raw_id
        batch = cursor.get("firstBatch")
        if batch is None:
            batch = cursor.get("nextBatch")
        if type(batch) is list:
            num_docs = len(batch)
    ok = get("ok", 1)
    if ok and "writeErrors" not in document and "$err" not in document:
        return ReplySummary(True, None, None, None, cursor_id, num_docs, False, False, ())  # the common case
    return _failure_summary(document, bool(ok), cursor_id, num_docs)


def _failure_summary(document: dict[str, Any], ok: bool, cursor_id: int | None, num_docs: int) -> ReplySummary:
    errmsg = document.get("errmsg")
    legacy_error = document.get("$err")
    code = document.get("code")
    code = int(code) if isinstance(code, int | float) and not isinstance(code, bool) else None
    code_name = document.get("codeName")
    write_errors: tuple[tuple[int | None, str | None], ...] = ()
    entries = document.get("writeErrors")
    if isinstance(entries, list):
        write_errors = tuple(
            (
                e.get("code") if isinstance(e.get("code"), int) else None,
                e.get("codeName") if isinstance(e.get("codeName"), str) else None,
            )
            for e in entries
            if isinstance(e, dict)
        )
    return ReplySummary(
        ok=ok and legacy_error is None,
        code=code,
        code_name=code_name if isinstance(code_name, str) else None,
        errmsg=errmsg if isinstance(errmsg, str) else (legacy_error if isinstance(legacy_error, str) else None),
        cursor_id=cursor_id,
        num_docs=num_docs,
        cursor_not_found=code == _CURSOR_NOT_FOUND,
        query_failure=False,
        write_errors=write_errors,
    )


def summarize_document(data: bytes) -> ReplySummary:
    """Summarise one command reply document (OP_MSG body, or the first document of a ``$cmd`` OP_REPLY)."""
    if len(data) <= SMALL_REPLY:
        return _summary_from_dict(_bson_peek.decode(data))
    ok = True
    code: int | None = None
    code_name: str | None = None
    errmsg: str | None = None
    cursor_id: int | None = None
    num_docs = 0
    write_errors: tuple[tuple[int | None, str | None], ...] = ()
    for kind, name, start, stop in _bson_peek.elements(data):
        if name == "ok":
            ok = bool(_number(data, kind, start))
        elif name == "code":
            value = _number(data, kind, start)
            code = int(value) if value is not None else None
        elif name == "codeName" and kind == STRING:
            code_name = _string(data, start, stop)
        elif name in ("errmsg", "$err") and kind == STRING:
            errmsg = _string(data, start, stop)
            if name == "$err":
                ok = False
        elif name == "cursor" and kind == DOCUMENT:
            cursor_id, num_docs = _cursor(data[start:stop])
        elif name == "writeErrors" and kind == ARRAY:
            write_errors = _write_errors(data[start:stop])
    return ReplySummary(
        ok=ok,
        code=code,
        code_name=code_name,
        errmsg=errmsg,
        cursor_id=cursor_id,
        num_docs=num_docs,
        cursor_not_found=code == _CURSOR_NOT_FOUND,
        query_failure=False,
        write_errors=write_errors,
    )


def summarize_reply(message: PlainMessage | OpCompressed) -> ReplySummary:
    """The facts of one reply. OP_MSG: from its body. OP_REPLY: from its flags, and from its first document
    when that is a command reply (has ``ok``) or an error (``$err``)."""
    if isinstance(message, OpCompressed):
        message = message.inner
    if isinstance(message, OpMsg):
        if len(message.body) <= SMALL_REPLY:
            return _summary_from_dict(message.document())  # decoded once, kept for other filters
        return summarize_document(message.body)
    if not isinstance(message, OpReply):
        raise TypeError(f"{type(message).__name__} is not a reply")
    flags = message.response_flags
    cursor_not_found = bool(flags & REPLY_CURSOR_NOT_FOUND)
    query_failure = bool(flags & REPLY_QUERY_FAILURE)
    if message.number_returned == 1:
        first = summarize_document(message.documents[0])
        is_command_reply = first.errmsg is not None or first.code is not None or (
            b"\x00ok\x00" in message.documents[0]
        )
        if is_command_reply or query_failure:
            return ReplySummary(
                ok=first.ok and not query_failure and not cursor_not_found,
                code=first.code,
                code_name=first.code_name,
                errmsg=first.errmsg,
                cursor_id=first.cursor_id if first.cursor_id is not None else message.cursor_id,
                num_docs=first.num_docs if first.cursor_id is not None else 1,
                cursor_not_found=cursor_not_found or first.cursor_not_found,
                query_failure=query_failure,
                write_errors=first.write_errors,
            )
    return ReplySummary(
        ok=not (cursor_not_found or query_failure),
        code=None,
        code_name=None,
        errmsg=None,
        cursor_id=message.cursor_id,
        num_docs=message.number_returned,
        cursor_not_found=cursor_not_found,
        query_failure=query_failure,
        write_errors=(),
    )
