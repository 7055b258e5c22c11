"""Two bare TCP byte forwarders, the yardsticks for what Python itself costs per message.

- ``asyncio``: asyncio Protocols on uvloop. Bytes move inside ``data_received`` callbacks straight into the
  peer's ``transport.write``; backpressure is ``pause_writing`` on one side pausing reading on the other.
  This is the data-path shape meshproxy uses (design.md, principle 5).
- ``anyio``: the same forwarder written the idiomatic anyio way, on byte streams: per connection a task
  group with two pump tasks, ``async for chunk in source: await sink.send(chunk)``, on the asyncio backend
  with uvloop. Every chunk costs an await on each side, which is what the benchmark shows.

Neither parses anything: they bound from above what a Python proxy can do before it does any L7 work.

Run alone: ``python -m benchmarks.forwarders asyncio --listen 127.0.0.1:0 --upstream 127.0.0.1:27017``
prints ``LISTENING <port>`` and serves until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import cast

import anyio
from anyio.abc import SocketStream

from benchmarks.backend import install_uvloop, pin_to_cpu, serve_until_signalled


class _Relay(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the other side once both are connected."""

    __slots__ = ("peer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # keep our write side open: half-close is the peer's to finish

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Downstream(_Relay):
    """The accepted client side: reading stays paused until the upstream connection is up."""

    __slots__ = ("_pending", "_upstream")

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self._upstream = upstream
        self._pending: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:  # arrived before the upstream connection was up (pause_reading is advisory)
            self._pending.append(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._upstream
        try:
            _, upstream = await loop.create_connection(_Relay, host, port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        upstream.peer = self
        self.peer = upstream
        if self._pending:
            assert upstream.transport is not None
            upstream.transport.write(b"".join(self._pending))
            self._pending.clear()
        self.transport.resume_reading()


async def serve_asyncio_forwarder(listen: tuple[str, int], upstream: tuple[str, int]) -> asyncio.Server:
    """Start the asyncio-Protocol forwarder on the running loop; the caller owns the server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Downstream(upstream), listen[0], listen[1], backlog=1024)


async def _run_asyncio(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    await serve_until_signalled(await serve_asyncio_forwarder(listen, upstream))


async def _pump(source: SocketStream, sink: SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
        await sink.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


async def _run_anyio(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    async def handle(client: SocketStream) -> None:
        async with client:
            try:
                server = await anyio.connect_tcp(*upstream)
            except OSError:
                return
            async with server, anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, server)
                tg.start_soon(_pump, server, client)

    listener = await anyio.create_tcp_listener(local_host=listen[0], local_port=listen[1], backlog=1024)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(f"LISTENING {port}", flush=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forwarders", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["asyncio", "anyio"])
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0))
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    if args.kind == "asyncio":
        install_uvloop()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_run_asyncio(args.listen, args.upstream))
    else:
        try:
            import uvloop  # noqa: F401

            options = {"use_uvloop": True}
        except ImportError:
            options = {}
        anyio.run(_run_anyio, args.listen, args.upstream, backend="asyncio", backend_options=options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
