"""Real bytes for filter tests: requests built by pymongo's own message code, replies from a real SecantusDB.

``Chain`` drives a list of filters exactly as ``MongoSession`` does (``on_request`` in order until one
answers or delays, ``on_response`` in reverse once per reply, ``replies`` counted, ``finished_ns`` stamped),
without sockets or an event loop, so a test can look at each step.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import bson
from bson import CodecOptions
from pymongo import message as pymongo_message
from pymongo.compression_support import SnappyContext, ZlibContext, ZstdContext

from meshproxy.codecs.mongo import MongoDecoder, MongoMessage, OpMsg
from meshproxy.filters.mongo.api import ConnectionInfo, Delay, LocalReply, MongoFilter, MongoOperation

OPTS: CodecOptions[Any] = CodecOptions()
EXHAUST_ALLOWED = 1 << 16
MORE_TO_COME = 1 << 1

_connection_ids = itertools.count(1)


def op_msg(command: Mapping[str, Any], db: str = "app", *, flags: int = 0, compressor: str | None = None) -> bytes:
    """The bytes pymongo itself sends for ``command`` (OP_MSG, or OP_COMPRESSED with ``compressor``)."""
    ctx: ZlibContext | SnappyContext | ZstdContext | None = None
    if compressor == "zlib":
        ctx = ZlibContext(-1)
    elif compressor == "snappy":
        ctx = SnappyContext()
    elif compressor == "zstd":
        ctx = ZstdContext()
    _, data, _, _ = pymongo_message._op_msg(flags, dict(command), db, None, OPTS, ctx=ctx)
    return data


def legacy_is_master(request_id: int = 77) -> bytes:
    """A legacy OP_QUERY ``isMaster`` on ``admin.$cmd``, as pre-OP_MSG drivers open a connection.

    pymongo 4.20 no longer has an OP_QUERY builder, so the frame is laid out here around a document encoded
    by pymongo's ``bson``; SecantusDB answers it with a real OP_REPLY.
    """
    query = bson.encode({"isMaster": 1, "client": {"driver": {"name": "legacy", "version": "3.12"}}})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2004) + body


def decode_one(data: bytes) -> MongoMessage:
    messages = MongoDecoder().feed(data)
    assert len(messages) == 1
    return messages[0]


class Wire:
    """A raw client connection to SecantusDB."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        # Replies are decoded as the proxy's session decodes them: framing checked, bodies left undecoded.
        self.decoder = MongoDecoder(validate_documents=False)
        self.backlog: list[MongoMessage] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> MongoMessage:
        while not self.backlog:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "SecantusDB closed the connection"
            self.backlog.extend(self.decoder.feed(chunk))
        return self.backlog.pop(0)

    def close(self) -> None:
        self.sock.close()


class Chain:
    """Filters driven like ``MongoSession`` drives them."""

    def __init__(self, filters: list[MongoFilter], *, client: str = "127.0.0.1:50000") -> None:
        self.filters = filters
        self.connection = ConnectionInfo(
            id=next(_connection_ids),
            client=client,
            listener="test",
            local_address=("127.0.0.1", 27017),
            upstream="127.0.0.1:27018",
        )
        for f in filters:
            f.on_connection_open(self.connection)

    def request(self, data: bytes | MongoMessage) -> tuple[MongoOperation, Delay | LocalReply | None]:
        """Decode and run ``on_request``; a ``LocalReply`` is delivered back through ``on_response``."""
        message = decode_one(data) if isinstance(data, bytes) else data
        op = MongoOperation(self.connection, message, time.monotonic_ns())
        for index, f in enumerate(self.filters):
            action = f.on_request(op)
            if isinstance(action, LocalReply):
                op.response = action.reply
                op.local_reply = True
                op.replies = 1
                op.finished_ns = time.monotonic_ns()
                for g in reversed(self.filters[: index + 1]):
                    g.on_response(op)
                return op, action
            if action is not None:
                return op, action
        return op, None

    def reply(self, op: MongoOperation, data: bytes | MongoMessage) -> MongoOperation:
        message = decode_one(data) if isinstance(data, bytes) else data
        op.response = message
        op.response_replaced = False
        op.replies += 1
        op.finished_ns = time.monotonic_ns()
        for f in reversed(self.filters):
            f.on_response(op)
        return op

    def exchange(self, wire: Wire, data: bytes) -> MongoOperation:
        """Send ``data`` to SecantusDB and pass every reply (all of an exhaust stream) through the chain."""
        op, action = self.request(data)
        assert action is None, action
        wire.send(data)
        if not op.expects_reply:
            return op
        while True:
            self.reply(op, wire.receive())
            if not op.more_to_come:
                return op

    def close(self, *, active_operations: int = 0, local: bool = False) -> None:
        for f in self.filters:
            f.on_connection_close(self.connection, active_operations=active_operations, local=local)


def is_op_msg(message: MongoMessage | None) -> bool:
    return isinstance(message, OpMsg)
