"""DynamoDB requests and responses, read from an already-framed HTTP/1.1 message.

The HTTP layer (``meshproxy.codecs.http1``) frames messages; this module turns a request's headers and
body into a ``DynamoRequest`` (operation from ``X-Amz-Target``, tables from the JSON body through the
paths ``_model`` compiled from botocore's model) and a response into a ``DynamoResponse`` (error type,
consumed capacity, unprocessed items and keys, counts).

Bad input is *not* an exception here: a request with no target, an unknown target or a body that is not
JSON is still a request the proxy may pass through by policy, so it comes back with a flag
(``operation_missing``, ``operation_unknown``, ``invalid_body``) that the stats filter counts
(``operation_missing``, ``invalid_req_body`` ...). Bodies are kept byte for byte in ``body``; a filter
that changes a response body must fix ``x-amz-crc32`` (botocore retries on a mismatch): ``crc32_of``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from meshproxy.codecs.dynamo._model import Operation, operation_for_target, tables_of

MAX_DECOMPRESSED_BODY: Final = 16 * 1024 * 1024
"""Largest gzip-decoded body read for stats (DynamoDB caps a request at 16 MB; a response page at 1 MB)."""

Headers = Iterable[tuple[bytes, bytes]] | Mapping[bytes, bytes] | Mapping[str, str]
"""Headers as the HTTP layer hands them over: raw pairs (any case) or a mapping."""


class ConsumedCapacity(NamedTuple):
    """One table's entry of a response's ``ConsumedCapacity`` (units are floats in DynamoDB's JSON)."""

    table: str
    capacity_units: float | None
    read_capacity_units: float | None
    write_capacity_units: float | None


@dataclass(slots=True)
class DynamoRequest:
    """One DynamoDB (or DynamoDB Streams) request: what was asked, of which tables."""

    operation: str | None
    """Operation name from ``X-Amz-Target`` (``GetItem``); None when the target is missing or unknown."""
    service: str
    """``dynamodb`` or ``dynamodbstreams`` (``dynamodb`` when the target does not say)."""
    tables: tuple[str, ...]
    """Tables the request names (batch and transaction calls: all of them; ARNs reduced to names)."""
    body: bytes
    """The body exactly as received (still gzip-encoded if it was)."""
    document: dict[str, Any] | None
    """The decoded JSON body, or None when it is not a JSON object."""
    target: bytes | None
    """The raw ``X-Amz-Target`` header value."""
    operation_missing: bool = False
    """No ``X-Amz-Target`` header."""
    operation_unknown: bool = False
    """An ``X-Amz-Target`` the service models do not define."""
    invalid_body: bool = False
    """The body is not a JSON object (or its gzip encoding is broken)."""
    compiled: Operation | None = None
    """The compiled model operation (its botocore ``OperationModel`` is ``compiled.model``)."""

    @property
    def table(self) -> str | None:
        """The one table of a single-table request; None for none or several (Envoy's ``table_missing`` /
        ``multiple_tables``)."""
        return self.tables[0] if len(self.tables) == 1 else None

    @property
    def multiple_tables(self) -> bool:
        return len(self.tables) > 1


@dataclass(slots=True)
class DynamoResponse:
    """One DynamoDB response: status, error, and the accounting a stats filter wants."""

    status: int
    error_type: str | None
    """``__type`` after its ``#`` (``ResourceNotFoundException``), else the ``x-amzn-ErrorType`` header."""
    message: str | None
    consumed_capacity: tuple[ConsumedCapacity, ...]
    unprocessed_items: tuple[tuple[str, int], ...]
    """``BatchWriteItem``'s ``UnprocessedItems``: (table, write requests left) per table."""
    unprocessed_keys: tuple[tuple[str, int], ...]
    """``BatchGetItem``'s ``UnprocessedKeys``: (table, keys left) per table."""
    item_count: int | None
    """Items returned: ``len(Items)``, 1 for an ``Item``, the sum over ``Responses``; None otherwise."""
    count: int | None
    scanned_count: int | None
    crc32: int | None
    """The ``x-amz-crc32`` header (CRC32 of the body bytes as sent)."""
    body: bytes
    document: dict[str, Any] | None
    invalid_body: bool = False
    """A non-empty body that is not a JSON object."""
    operation: str | None = None
    """The request's operation, when the caller passed the request."""

    @property
    def is_error(self) -> bool:
        return self.error_type is not None or self.status >= 400

    @property
    def crc32_ok(self) -> bool:
        """Whether the body matches its ``x-amz-crc32`` (true when there is none)."""
        return self.crc32 is None or self.crc32 == crc32_of(self.body)

    @property
    def unprocessed_total(self) -> int:
        return sum(n for _, n in self.unprocessed_items) + sum(n for _, n in self.unprocessed_keys)


def crc32_of(body: bytes) -> int:
    """The value of ``x-amz-crc32`` for ``body`` (unsigned CRC-32, as botocore checks it)."""
    return zlib.crc32(body) & 0xFFFFFFFF


def header(headers: Headers, name: bytes) -> bytes | None:
    """First value of header ``name`` (lower-case bytes), case-insensitively, from pairs or a mapping."""
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            raw_key = key.encode("latin-1") if isinstance(key, str) else key
            if raw_key.lower() == name:
                return value.encode("latin-1") if isinstance(value, str) else value
        return None
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


_WANTED: Final = frozenset({b"x-amz-target", b"content-encoding", b"x-amz-crc32", b"x-amzn-errortype"})


_WANTED_LENGTHS: Final = frozenset(len(name) for name in _WANTED)


def _pick(headers: Headers) -> dict[bytes, bytes]:
    """The few headers this module reads, found in one pass (lower-case names; first value wins).

    Raw pairs from the HTTP layer are the hot path: a length check skips most headers before any
    ``lower()`` (about 0.5 us saved on boto3's eleven request headers).
    """
    found: dict[bytes, bytes] = {}
    if type(headers) is list:
        for key, value in headers:
            if len(key) in _WANTED_LENGTHS:
                name = key.lower()
                if name in _WANTED and name not in found:
                    found[name] = value
        return found
    pairs: Iterable[tuple[bytes | str, bytes | str]] = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        name = key.lower().encode("latin-1") if isinstance(key, str) else key.lower()
        if name in _WANTED and name not in found:
            found[name] = value.encode("latin-1") if isinstance(value, str) else value
    return found


def _decoded_body(encoding: bytes | None, body: bytes) -> bytes | None:
    """The body with a gzip/deflate ``Content-Encoding`` undone (bounded); None if that fails."""
    if not encoding or encoding.strip().lower() == b"identity":
        return body
    wbits = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}.get(encoding.strip().lower())
    if wbits is None:
        return None
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(body, MAX_DECOMPRESSED_BODY)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:
        return None
    return out


def _json_object(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if type(document) is dict else None


def parse_request(headers: Headers, body: bytes) -> DynamoRequest:
    """Read a framed request. Never raises for bad input: flags say what was wrong."""
    picked = _pick(headers)
    target = picked.get(b"x-amz-target")
    compiled = operation_for_target(target) if target is not None else None
    document = _json_object(_decoded_body(picked.get(b"content-encoding"), body))
    invalid = document is None
    if compiled is None:
        service = "dynamodbstreams" if target is not None and target.startswith(b"DynamoDBStreams_") else "dynamodb"
        return DynamoRequest(
            operation=None,
            service=service,
            tables=(),
            body=body,
            document=document,
            target=target,
            operation_missing=target is None,
            operation_unknown=target is not None,
            invalid_body=invalid,
        )
    return DynamoRequest(
        operation=compiled.name,
        service=compiled.service,
        tables=tables_of(compiled, document) if document is not None else (),
        body=body,
        document=document,
        target=target,
        invalid_body=invalid,
        compiled=compiled,
    )


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def _integer(value: Any) -> int | None:
    return value if type(value) is int else None


def _consumed(value: Any) -> tuple[ConsumedCapacity, ...]:
    entries = value if type(value) is list else [value] if type(value) is dict else []
    out: list[ConsumedCapacity] = []
    for entry in entries:
        if type(entry) is dict and type(entry.get("TableName")) is str:
            out.append(
                ConsumedCapacity(
                    entry["TableName"],
                    _number(entry.get("CapacityUnits")),
                    _number(entry.get("ReadCapacityUnits")),
                    _number(entry.get("WriteCapacityUnits")),
                )
            )
    return tuple(out)


def _unprocessed(value: Any, inner_key: str | None) -> tuple[tuple[str, int], ...]:
    if type(value) is not dict:
        return ()
    out: list[tuple[str, int]] = []
    for table, pending in value.items():
        if inner_key is not None:
            pending = pending.get(inner_key) if type(pending) is dict else None
        if type(pending) is list and pending:
            out.append((table, len(pending)))
    return tuple(out)


def _item_count(document: dict[str, Any]) -> int | None:
    items = document.get("Items")
    if type(items) is list:
        return len(items)
    if type(document.get("Item")) is dict:
        return 1
    responses = document.get("Responses")
    if type(responses) is dict:  # BatchGetItem: {table: [items]}
        return sum(len(v) for v in responses.values() if type(v) is list)
    if type(responses) is list:  # TransactGetItems / BatchExecuteStatement: [{Item: ...}]
        return sum(1 for r in responses if type(r) is dict and type(r.get("Item")) is dict)
    return None


def _error_type(document: dict[str, Any] | None, raw: bytes | None) -> str | None:
    if document is not None:
        kind = document.get("__type")
        if type(kind) is str and kind:
            return kind.rpartition("#")[2]
    if raw:
        return raw.decode("latin-1").partition(":")[0].strip() or None
    return None


def parse_response(status: int, headers: Headers, body: bytes, request: DynamoRequest | None = None) -> DynamoResponse:
    """Read a framed response. Never raises for bad input: ``invalid_body`` says the JSON was bad."""
    picked = _pick(headers)
    document = _json_object(_decoded_body(picked.get(b"content-encoding"), body))
    crc = picked.get(b"x-amz-crc32")
    crc32 = int(crc) if crc is not None and crc.strip().isdigit() else None
    message: str | None = None
    if document is None:
        return DynamoResponse(
            status=status,
            error_type=_error_type(None, picked.get(b"x-amzn-errortype")),
            message=None,
            consumed_capacity=(),
            unprocessed_items=(),
            unprocessed_keys=(),
            item_count=None,
            count=None,
            scanned_count=None,
            crc32=crc32,
            body=body,
            document=None,
            invalid_body=bool(body.strip()),
            operation=request.operation if request is not None else None,
        )
    error_type = _error_type(document, picked.get(b"x-amzn-errortype"))
    if error_type is not None:
        text = document.get("message", document.get("Message"))
        message = text if type(text) is str else None
    return DynamoResponse(
        status=status,
        error_type=error_type,
        message=message,
        consumed_capacity=_consumed(document.get("ConsumedCapacity")),
        unprocessed_items=_unprocessed(document.get("UnprocessedItems"), None),
        unprocessed_keys=_unprocessed(document.get("UnprocessedKeys"), "Keys"),
        item_count=_item_count(document),
        count=_integer(document.get("Count")),
        scanned_count=_integer(document.get("ScannedCount")),
        crc32=crc32,
        body=body,
        document=document,
        operation=request.operation if request is not None else None,
    )
