"""One JSON line per completed MongoDB operation, to a file or stdout / stderr.

A line is written when the operation completes: on its final reply (the last of an exhaust stream), or when
the request is sent for operations that get no reply (``w: 0`` writes, legacy OP_INSERT / OP_UPDATE /
OP_DELETE / OP_KILL_CURSORS). JSON lines are what log shippers ingest without a parser of their own.

Fields (always present, ``null`` when not applicable)::

    time          RFC 3339 UTC time the operation completed, millisecond precision
    connection    the proxy's connection id
    listener      listener name
    client        downstream peer, ip:port
    upstream      upstream host, ip:port (null before the upstream connection exists)
    db, collection, command
    request_bytes, reply_bytes   wire sizes (reply_bytes sums every reply of an exhaust stream)
    replies       number of replies (0 for fire-and-forget)
    duration_ms   request decoded -> final reply decoded (0 for fire-and-forget)
    ok            true / false (null when no reply is expected)
    code, code_name, errmsg      the error of an ok: 0 reply, else null
    write_errors  number of writeErrors in an ok: 1 reply
    num_docs      documents returned (the cursor batch; 0 for a write), as ``summarize_reply`` counts them
    compressed    compressor name of an OP_COMPRESSED request, else null
    local_reply   true when the proxy answered itself (fault injection)
"""

from __future__ import annotations

from typing import Any

from meshproxy.codecs.mongo import OpCompressed, summarize_reply
from meshproxy.filters._shared import STDOUT, JsonLineSink, now_rfc3339
from meshproxy.filters.mongo.api import ConnectionInfo, MongoFilter, MongoOperation


class MongoAccessLogFilter(MongoFilter):
    """Writes the access log; ``path`` is a file (appended to, line-buffered), ``stdout`` or ``stderr``."""

    def __init__(self, path: str = STDOUT) -> None:
        self.path = path
        self._sink = JsonLineSink(path)
        self._stream_bytes: dict[tuple[int, int], tuple[MongoOperation, int]] = {}
        """Reply bytes of exhaust streams so far, by (connection id, ``id(op)``); only streams have one.
        The operation is held so that its ``id`` cannot be reused while the entry exists."""

    def on_request(self, op: MongoOperation) -> None:
        if not op.expects_reply:
            self._log(op, None)

    def on_response(self, op: MongoOperation) -> None:
        response = op.response
        if response is None:
            return
        if op.more_to_come:
            key = (op.connection.id, id(op))
            _, so_far = self._stream_bytes.get(key, (op, 0))
            self._stream_bytes[key] = (op, so_far + len(response.raw))
            return
        streamed = 0
        if self._stream_bytes:
            _, streamed = self._stream_bytes.pop((op.connection.id, id(op)), (op, 0))
        self._log(op, streamed + len(response.raw))

    def on_connection_close(self, connection: ConnectionInfo, *, active_operations: int, local: bool) -> None:
        if self._stream_bytes:
            for key in [k for k in self._stream_bytes if k[0] == connection.id]:
                del self._stream_bytes[key]

    def _log(self, op: MongoOperation, reply_bytes: int | None) -> None:
        connection = op.connection
        request = op.request
        record: dict[str, Any] = {
            "time": now_rfc3339(),
            "connection": connection.id,
            "listener": connection.listener,
            "client": connection.client,
            "upstream": op.upstream or connection.upstream,
            "db": op.database,
            "collection": op.collection,
            "command": op.command,
            "request_bytes": len(request.raw),
            "reply_bytes": reply_bytes or 0,
            "replies": op.replies,
            "duration_ms": round(op.duration_ms, 3),
            "ok": None,
            "code": None,
            "code_name": None,
            "errmsg": None,
            "write_errors": 0,
            "num_docs": None,
            "compressed": request.compressor.name.lower() if isinstance(request, OpCompressed) else None,
            "local_reply": op.local_reply,
        }
        if reply_bytes is not None and op.response is not None:
            summary = summarize_reply(op.response)
            record["ok"] = summary.ok
            record["num_docs"] = summary.num_docs
            record["write_errors"] = len(summary.write_errors)
            if not summary.ok:
                record["code"] = summary.code
                record["code_name"] = summary.code_name
                record["errmsg"] = summary.errmsg
        self._sink.write(record)

    def close(self) -> None:
        self._sink.close()
        self._stream_bytes.clear()
