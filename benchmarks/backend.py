"""A canned MongoDB responder: the backend that must never be the bottleneck of a proxy benchmark.

It frames requests by their length prefix and answers each ``find`` OP_MSG with one fixed, valid OP_MSG
reply (``{cursor: {firstBatch: [{_id: 1}], id: 0, ns: "bench.c"}, ok: 1}``) whose responseTo is the
request's requestID. Per request that is a slice and a join, on uvloop, inside one ``data_received``
callback that answers every complete request in the chunk with a single ``write``.

Anything else gets a plausible answer on a slower path, so a real driver (pymongo) can connect too:
``hello`` / ``isMaster`` (OP_MSG or the legacy OP_QUERY handshake) get a standalone-server hello reply,
any other command gets ``{ok: 1}``, and ``moreToCome`` requests get no reply, as the protocol says.

Run it alone: ``python -m benchmarks.backend --port 0`` prints ``LISTENING <port>`` and serves until
SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import cast

from benchmarks import wire

#: Requests larger than this close the connection: the benchmark never sends one, a bug might.
MAX_REQUEST_SIZE = 48_000_000

_OP_MSG_LE = wire.OP_MSG.to_bytes(4, "little")
_FIND_HEAD, _FIND_TAIL = wire.op_msg_reply_parts(wire.FIND_REPLY_DOC)
_OK_MSG_HEAD, _OK_MSG_TAIL = wire.op_msg_reply_parts({"ok": 1.0})
_OK_REPLY_HEAD, _OK_REPLY_TAIL = wire.op_reply_parts({"ok": 1.0})
_HELLO_COMMANDS = frozenset({"hello", "isMaster", "ismaster"})


class CannedResponder(asyncio.Protocol):
    """One client connection: frame requests, answer each with canned bytes."""

    __slots__ = ("_buffer", "_transport")

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        out: list[bytes] = []
        offset = 0
        size = len(data)
        while size - offset >= 16:
            length = int.from_bytes(data[offset : offset + 4], "little")
            if length < 16 or length > MAX_REQUEST_SIZE:
                assert self._transport is not None
                self._transport.close()
                return
            if size - offset < length:
                break
            if (
                data[offset + 12 : offset + 16] == _OP_MSG_LE
                and not data[offset + 16] & wire.MORE_TO_COME
                and data.startswith(b"find\x00", offset + 26)
            ):
                out.append(_FIND_HEAD)
                out.append(data[offset + 4 : offset + 8])
                out.append(_FIND_TAIL)
            else:
                out.extend(_slow_answer(data[offset : offset + length]))
            offset += length
        self._buffer = data[offset:]
        if out:
            assert self._transport is not None
            self._transport.write(b"".join(out))


def _slow_answer(message: bytes) -> list[bytes]:
    """Answers for everything that is not the benchmark's ``find`` (handshakes, pings, endSessions)."""
    opcode = int.from_bytes(message[12:16], "little")
    request_id = message[4:8]
    if opcode == wire.OP_MSG:
        if message[16] & wire.MORE_TO_COME:
            return []
        name = wire.command_name(message)
        if name == "find":
            return [_FIND_HEAD, request_id, _FIND_TAIL]
        if name in _HELLO_COMMANDS:
            head, tail = wire.op_msg_reply_parts(wire.hello_reply_doc())
            return [head, request_id, tail]
        return [_OK_MSG_HEAD, request_id, _OK_MSG_TAIL]
    if opcode == wire.OP_QUERY:
        if wire.command_name(message) in _HELLO_COMMANDS:
            head, tail = wire.op_reply_parts(wire.hello_reply_doc())
            return [head, request_id, tail]
        return [_OK_REPLY_HEAD, request_id, _OK_REPLY_TAIL]
    return []  # legacy writes and anything unknown: no reply expected


async def start_backend(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start serving on the running loop; the caller owns the returned server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(CannedResponder, host, port, backlog=1024)


async def serve_until_signalled(server: asyncio.Server) -> None:
    """Announce the bound port (``LISTENING <port>``, which the harness waits for), serve until SIGTERM or
    SIGINT, then close. Shared by every benchmark process that serves."""
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def install_uvloop() -> str:
    """Use uvloop when it is installed; return the loop's name for reports."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {getattr(uvloop, '__version__', '?')}"


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process to one CPU (Linux); ``None`` leaves the scheduler alone."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def serve_main(
    argv: list[str] | None, prog: str, description: str, protocol: Callable[[], asyncio.Protocol]
) -> int:
    """``main`` of every canned backend: ``--host``, ``--port`` (0: any), ``--cpu``; pinned, on uvloop, one
    ``protocol`` per connection until SIGTERM / SIGINT."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    install_uvloop()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await serve_until_signalled(await loop.create_server(protocol, args.host, args.port, backlog=1024))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve_main(argv, "python -m benchmarks.backend", __doc__.split("\n")[0], CannedResponder)


if __name__ == "__main__":
    sys.exit(main())
