"""A test-only TCP stage that lends SecantusDB the server's half of MongoDB wire compression.

SecantusDB never negotiates compression: a driver configured with ``compressors=[...]`` silently talks to
it uncompressed, and the sidecar's OP_COMPRESSED path would never run. Put this stage between the sidecar
and SecantusDB and the driver really compresses:

- it reads the proxy-side stream with ``meshproxy.codecs.mongo.MongoDecoder`` and remembers the
  ``compression`` list a client offers in its ``hello`` / ``isMaster``;
- it adds ``compression: [<first offered that it supports>]`` to SecantusDB's reply to that handshake
  (re-encoded with ``OpMsg.from_document`` / ``encode_op_reply``), as a compressing server would;
- it sends the ``inner`` (decompressed) message of every OP_COMPRESSED request to SecantusDB;
- it compresses SecantusDB's replies to compressed requests with the request's compressor
  (``compress_message``), as the compression spec asks of a server;
- it counts, per compressor, the requests it decompressed and the replies it compressed, so a test can
  show that compressed bytes really crossed the sidecar.

Plain blocking sockets and two threads per connection: it serves a handful of test connections, and
being simple matters more here than speed. It is not under test; meshproxy's codec is used only to read
and write the stage's side of the chain.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from meshproxy.codecs.mongo import (
    MORE_TO_COME,
    Compressor,
    MongoDecoder,
    MongoMessage,
    OpCompressed,
    OpMsg,
    OpQuery,
    OpReply,
    compress_message,
    encode_op_reply,
)

SUPPORTED: dict[str, Compressor] = {"snappy": Compressor.SNAPPY, "zlib": Compressor.ZLIB, "zstd": Compressor.ZSTD}
"""The compressors the stage speaks, by their handshake names."""

_HANDSHAKES = frozenset({"hello", "isMaster", "ismaster"})
_CHUNK = 1 << 16


def offered_compressors(message: MongoMessage) -> list[str] | None:
    """The ``compression`` list of a handshake request; None when ``message`` is not a handshake."""
    if isinstance(message, OpMsg) and message.command_name in _HANDSHAKES:
        document = message.document()
    elif isinstance(message, OpQuery) and message.command_name in _HANDSHAKES:
        document = message.document()
        document = document.get("$query", document.get("query", document))
    else:
        return None
    offered = document.get("compression", [])
    return [str(name) for name in offered] if isinstance(offered, list) else []


def announce(reply: MongoMessage, compressor: str) -> MongoMessage:
    """SecantusDB's handshake reply, re-encoded with ``compression: [compressor]``."""
    header = reply.header
    if isinstance(reply, OpMsg):
        document: dict[str, Any] = {**reply.document(), "compression": [compressor]}
        return OpMsg.from_document(
            document, request_id=header.request_id, response_to=header.response_to, flag_bits=reply.flag_bits
        )
    if isinstance(reply, OpReply):
        first = reply.first_document() or {}
        return encode_op_reply(
            [{**first, "compression": [compressor]}],
            request_id=header.request_id,
            response_to=header.response_to,
            response_flags=reply.response_flags,
            cursor_id=reply.cursor_id,
            starting_from=reply.starting_from,
        )
    return reply


@dataclass(slots=True)
class _Pair:
    """One proxied connection: what its two directions share."""

    client: socket.socket
    server: socket.socket
    announce: dict[int, str] = field(default_factory=dict)
    """requestID of a handshake -> the compressor its reply must announce."""
    compress: dict[int, Compressor] = field(default_factory=dict)
    """requestID of a compressed request (or of a ``moreToCome`` reply) -> the reply's compressor."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class CompressingStage:
    """``with CompressingStage(upstream) as stage:`` listens on ``stage.address`` and relays to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.decompressed: Counter[str] = Counter()
        """OP_COMPRESSED requests decompressed, by compressor name."""
        self.compressed: Counter[str] = Counter()
        """Replies compressed, by compressor name."""
        self.negotiated: Counter[str] = Counter()
        """Handshake replies that announced a compressor, by name."""
        self.errors: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> CompressingStage:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._shut(pair)
        for thread in list(self._threads):
            thread.join(5)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="compressing-stage")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError as error:
                self.errors.append(f"cannot reach {self.upstream}: {error}")
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            self._spawn(self._requests, pair)
            self._spawn(self._replies, pair)

    @staticmethod
    def _shut(pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pump(self, pair: _Pair, source: socket.socket, decoder: MongoDecoder, handle: Any) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                for message in decoder.feed(data):
                    handle(pair, message)
        except OSError:
            pass  # the other direction closed the pair
        except Exception as error:  # a bug in the stage must show up in the test, not hang it
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self._shut(pair)

    # -- the two directions -----------------------------------------------------------------------------

    def _requests(self, pair: _Pair) -> None:
        self._pump(pair, pair.client, MongoDecoder(), self._on_request)

    def _replies(self, pair: _Pair) -> None:
        self._pump(pair, pair.server, MongoDecoder(validate_documents=False), self._on_reply)

    def _on_request(self, pair: _Pair, message: MongoMessage) -> None:
        request_id = message.header.request_id
        offered = offered_compressors(message)
        if offered:
            choice = next((name for name in offered if name in SUPPORTED), None)
            if choice is not None:
                with pair.lock:
                    pair.announce[request_id] = choice
        if isinstance(message, OpCompressed):
            with pair.lock:
                pair.compress[request_id] = message.compressor
            self.decompressed[message.compressor.name.lower()] += 1
            pair.server.sendall(message.inner.raw)
            return
        pair.server.sendall(message.raw)

    def _on_reply(self, pair: _Pair, reply: MongoMessage) -> None:
        header = reply.header
        with pair.lock:
            choice = pair.announce.pop(header.response_to, None)
            compressor = pair.compress.pop(header.response_to, None)
            if compressor is not None and isinstance(reply, OpMsg) and reply.flag_bits & MORE_TO_COME:
                # The next reply of the stream answers this one (the wire protocol) or, from SecantusDB,
                # the request that opened the stream again: keep both.
                pair.compress[header.request_id] = compressor
                pair.compress[header.response_to] = compressor
        if choice is not None:
            reply = announce(reply, choice)
            self.negotiated[choice] += 1
        if compressor is None:
            pair.client.sendall(reply.raw)
            return
        self.compressed[compressor.name.lower()] += 1
        pair.client.sendall(compress_message(reply, compressor))
