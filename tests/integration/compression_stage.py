"""A test-only TCP stage that gives a compression-unaware MongoDB server wire compression.

SecantusDB never negotiates compression, so a driver configured with ``compressors=[...]`` would talk to
it uncompressed and the proxy's OP_COMPRESSED path would never run. This stage sits between the proxy (or
a driver) and SecantusDB and plays the server's half of the compression spec:

- it remembers the ``compression`` list a client offers in its ``hello`` / ``isMaster``;
- it adds ``compression: [<first offered that the stage supports>]`` to the server's reply to that
  handshake (the reply is re-encoded, which is what a real server's reply would look like);
- it decompresses OP_COMPRESSED requests into plain messages for the server;
- it compresses the server's replies to compressed requests with the request's compressor, as the spec
  requires of a server.

It counts what it decompressed and compressed per compressor, so a test can prove that the bytes that
crossed the proxy really were compressed. Messages are read with meshproxy's own codec; the codec is
exercised here only on the stage's side of the chain, never as the thing under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from meshproxy.codecs.mongo import (
    Compressor,
    MongoDecoder,
    MongoMessage,
    OpCompressed,
    OpMsg,
    OpQuery,
    OpReply,
    compress_message,
    encode_op_msg,
    encode_op_reply,
)

SUPPORTED = ("snappy", "zlib", "zstd")
"""The compressors the stage can speak, by their names in the handshake."""

_BY_NAME = {"snappy": Compressor.SNAPPY, "zlib": Compressor.ZLIB, "zstd": Compressor.ZSTD}
_HANDSHAKE = frozenset({"hello", "isMaster", "ismaster"})
_READ_SIZE = 1 << 16


@dataclass(slots=True)
class _Link:
    """What one client connection's two directions share."""

    handshakes: dict[int, str | None] = field(default_factory=dict)
    """requestID of a handshake -> the compressor to announce in its reply (None: announce nothing)."""
    compressed: dict[int, Compressor] = field(default_factory=dict)
    """requestID of a compressed request -> the compressor its reply must use."""


def _handshake_offer(message: MongoMessage) -> list[str] | None:
    """The ``compression`` list of a handshake request, ``[]`` if it offers none; None if not a handshake."""
    if isinstance(message, OpMsg) and message.command_name in _HANDSHAKE:
        document = message.document()
    elif isinstance(message, OpQuery) and message.is_command and message.command_name in _HANDSHAKE:
        document = message.document()
        if "$query" in document or "query" in document:
            document = document.get("$query", document.get("query", {}))
    else:
        return None
    offered = document.get("compression", [])
    return [str(name) for name in offered] if isinstance(offered, list) else []


def _announce(reply: MongoMessage, compressor: str) -> bytes:
    """The server's handshake reply re-encoded with ``compression: [compressor]``."""
    header = reply.header
    if isinstance(reply, OpMsg):
        document: dict[str, Any] = dict(reply.document())
        document["compression"] = [compressor]
        return encode_op_msg(
            document, request_id=header.request_id, response_to=header.response_to, flag_bits=reply.flag_bits & ~1
        ).raw
    if isinstance(reply, OpReply):
        first = reply.first_document()
        if first is None:
            return reply.raw
        first = dict(first)
        first["compression"] = [compressor]
        return encode_op_reply(
            [first],
            request_id=header.request_id,
            response_to=header.response_to,
            response_flags=reply.response_flags,
            cursor_id=reply.cursor_id,
            starting_from=reply.starting_from,
        ).raw
    return reply.raw


class CompressionStage:
    """Listen on 127.0.0.1 and relay to ``upstream``, speaking compression to the client side.

    Use as a context manager: the stage runs its own asyncio loop in a daemon thread.
    ``decompressed[name]`` counts compressed requests it unpacked, ``compressed[name]`` the replies it
    packed, ``announced[name]`` the handshakes it answered with that compressor.
    """

    def __init__(self, upstream: tuple[str, int], *, supported: tuple[str, ...] = SUPPORTED) -> None:
        unknown = set(supported) - set(SUPPORTED)
        if unknown:
            raise ValueError(f"the stage cannot speak {sorted(unknown)}")
        self.upstream = upstream
        self.supported = supported
        self.decompressed: Counter[str] = Counter()
        self.compressed: Counter[str] = Counter()
        self.announced: Counter[str] = Counter()
        self.offers: list[list[str]] = []
        """Every ``compression`` list clients offered, in arrival order (``[]`` for a plain handshake)."""
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> CompressionStage:
        self._thread = threading.Thread(target=self._run, name="compression-stage", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("compression stage did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        self._ready.set()
        await self._stopping.wait()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    # -- one connection --------------------------------------------------------------------------------

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            self._error(f"upstream connect failed: {exc}")
            client_writer.close()
            self._tasks.discard(task)
            return
        link = _Link()
        requests = asyncio.create_task(self._requests(link, client_reader, server_writer))
        replies = asyncio.create_task(self._replies(link, server_reader, client_writer))
        try:
            done, _ = await asyncio.wait({requests, replies}, return_when=asyncio.FIRST_COMPLETED)
            for pump in done:
                if not pump.cancelled() and pump.exception() is not None:
                    self._error(repr(pump.exception()))
        finally:
            for pump in (requests, replies):
                pump.cancel()
            await asyncio.gather(requests, replies, return_exceptions=True)
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _requests(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MongoDecoder()
        while data := await reader.read(_READ_SIZE):
            out = []
            for message in decoder.feed(data):
                plain = message
                if isinstance(message, OpCompressed):
                    name = message.compressor.name.lower()
                    with self._lock:
                        self.decompressed[name] += 1
                    link.compressed[message.header.request_id] = message.compressor
                    plain = message.inner
                offer = _handshake_offer(plain)
                if offer is not None:
                    with self._lock:
                        self.offers.append(offer)
                    chosen = next((name for name in offer if name in self.supported), None)
                    link.handshakes[plain.header.request_id] = chosen
                out.append(plain.raw)
            if out:
                writer.write(b"".join(out))
                await writer.drain()

    async def _replies(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MongoDecoder(validate_documents=False)
        while data := await reader.read(_READ_SIZE):
            out = []
            for reply in decoder.feed(data):
                header = reply.header
                raw = reply.raw
                more_to_come = isinstance(reply, OpMsg) and reply.more_to_come
                if header.response_to in link.handshakes:
                    chosen = link.handshakes.pop(header.response_to)
                    if chosen is not None:
                        raw = _announce(reply, chosen)
                        with self._lock:
                            self.announced[chosen] += 1
                compressor = link.compressed.pop(header.response_to, None)
                if compressor is not None:
                    if more_to_come:
                        # An exhaust stream: the next reply answers this one's requestID.
                        link.compressed[header.request_id] = compressor
                    plain = reply if raw is reply.raw else MongoDecoder(validate_documents=False).feed(raw)[0]
                    raw = compress_message(plain, compressor)
                    with self._lock:
                        self.compressed[compressor.name.lower()] += 1
                out.append(raw)
            if out:
                writer.write(b"".join(out))
                await writer.drain()

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)
