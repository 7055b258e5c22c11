"""What a query asks for and what a reply carries, as the stats filter needs them.

Envoy's query stats classify each query (scatter get: no ``_id`` in the filter; multi get: ``_id: {$in}``),
note whether it sets ``maxTimeMS`` and which callsite (``$comment``) it comes from. These helpers read just
those fields, from the document the decoder already decoded when it could, lazily otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import bson
from bson import CodecOptions
from bson.raw_bson import RawBSONDocument

from meshproxy.codecs.mongo import (
    QUERY_AWAIT_DATA,
    QUERY_EXHAUST,
    QUERY_NO_CURSOR_TIMEOUT,
    QUERY_TAILABLE_CURSOR,
    OpKillCursors,
    OpMsg,
    OpQuery,
    OpReply,
    PlainMessage,
)

_DOCUMENT_TYPES = (dict, RawBSONDocument)
"""A tuple, not ``dict | RawBSONDocument``: isinstance with a union type costs half as much again."""

_RAW = CodecOptions(document_class=RawBSONDocument)
"""Decode lazily: embedded documents stay raw bytes until a key of theirs is asked for."""


class QueryInfo(NamedTuple):
    """The parts of a query Envoy's stats look at (a tuple: one is built for every query)."""

    kind: int  # PRIMARY_KEY, SCATTER_GET or MULTI_GET
    max_time_ms: int
    callsite: str | None
    tailable: bool = False
    await_data: bool = False
    no_cursor_timeout: bool = False
    exhaust: bool = False


PRIMARY_KEY = 0
SCATTER_GET = 1
MULTI_GET = 2


def _as_int(value: Any) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def _query_kind(query_filter: Any) -> int:
    """Envoy's classification: no ``_id`` is a scatter get, ``_id: {$in: [...]}`` a multi get."""
    if not isinstance(query_filter, _DOCUMENT_TYPES):
        return SCATTER_GET
    id_value = query_filter.get("_id")
    if id_value is None and "_id" not in query_filter:
        return SCATTER_GET
    if isinstance(id_value, _DOCUMENT_TYPES) and "$in" in id_value:
        return MULTI_GET
    return PRIMARY_KEY


def _callsite(document: Mapping[str, Any], field_name: str) -> str | None:
    value = document.get(field_name)
    if value is None and field_name == "$comment":
        # The find command spells the legacy ``$comment`` modifier ``comment``.
        value = document.get("comment")
    return value if isinstance(value, str) else None


SMALL_COMMAND = 2048
"""Below this size pymongo's C decoder reads a whole command faster than a lazy ``RawBSONDocument`` reads
the few fields a query's stats need (measured on a typical ``find``: 2.4 µs vs 4.7 µs); above it (a filter
with a long ``$in`` list) decoding everything would cost more with every byte."""


def _lazy(data: bytes) -> Mapping[str, Any]:
    return bson.decode(data) if len(data) <= SMALL_COMMAND else RawBSONDocument(data, _RAW)


def query_info(message: PlainMessage, callsite_field: str) -> QueryInfo | None:
    """Read filter, ``maxTimeMS``, comment and cursor flags of a query; None if it cannot be read."""
    try:
        if isinstance(message, OpMsg):
            # The decoder usually decoded a small body already (it validates that way): reuse it.
            body = message.document() if message._document is not None else _lazy(message.body)
            return QueryInfo(
                kind=_query_kind(body.get("filter")),
                max_time_ms=_as_int(body.get("maxTimeMS")),
                callsite=_callsite(body, callsite_field),
                tailable=body.get("tailable") is True,
                await_data=body.get("awaitData") is True,
                no_cursor_timeout=body.get("noCursorTimeout") is True,
                exhaust=message.exhaust_allowed,
            )
        if isinstance(message, OpQuery):
            flags = message.flags
            query = _lazy(message.query)
            if message.is_command:
                # A find command sent as a ``$cmd`` query (drivers of the MongoDB 3.2-3.4 era).
                inner = query.get("$query", query)
                if not isinstance(inner, _DOCUMENT_TYPES):
                    inner = query
                query_filter: Any = inner.get("filter")
                max_time = _as_int(inner.get("maxTimeMS") or query.get("$maxTimeMS"))
                callsite = _callsite(inner, callsite_field) or _callsite(query, callsite_field)
            elif "$query" in query or "query" in query:
                query_filter = query.get("$query", query.get("query"))
                max_time = _as_int(query.get("$maxTimeMS"))
                callsite = _callsite(query, callsite_field)
            else:
                query_filter, max_time, callsite = query, 0, None
            return QueryInfo(
                kind=_query_kind(query_filter),
                max_time_ms=max_time,
                callsite=callsite,
                tailable=bool(flags & QUERY_TAILABLE_CURSOR),
                await_data=bool(flags & QUERY_AWAIT_DATA),
                no_cursor_timeout=bool(flags & QUERY_NO_CURSOR_TIMEOUT),
                exhaust=bool(flags & QUERY_EXHAUST),
            )
    except Exception:  # invalid BSON inside a message the codec accepted: no query stats, no crash
        return None
    return None


def killed_cursor_count(message: PlainMessage) -> int:
    if isinstance(message, OpKillCursors):
        return len(message.cursor_ids)
    body = message.body if isinstance(message, OpMsg) else message.query if isinstance(message, OpQuery) else None
    if body is None:
        return 0
    try:
        cursors = RawBSONDocument(body, _RAW).get("cursors")
    except Exception:
        return 0
    return len(cursors) if isinstance(cursors, list) else 0


def reply_payload_size(message: PlainMessage) -> int:
    """Bytes of reply documents (Envoy's ``reply_size``: the documents, not the headers)."""
    if isinstance(message, OpReply):
        return sum(len(document) for document in message.documents)
    if isinstance(message, OpMsg):
        size = len(message.body)
        for sequence in message.sequences:
            size += sum(len(document) for document in sequence.documents)
        return size
    return len(message.raw)
