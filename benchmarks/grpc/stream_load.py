"""Client-streaming load: one HTTP/2 connection, calls that each send many small messages, one per DATA frame.

h2load can send a streaming request body, but packs it into 16 KiB DATA frames (hundreds of messages per
frame), which measures a proxy's per-byte cost, not its per-message cost. Real gRPC clients write each
message as its own DATA frame, so this client does: every call is HEADERS, then ``--messages`` DATA
frames of one ``--payload``-byte message each (``END_STREAM`` on the last), and the canned backend answers
when the stream ends. The frames are precomputed bytes (``benchmarks.grpc.wire``) written as far as the
peer's flow-control windows allow, so the client costs almost nothing per message and the proxy's
per-frame work is what limits the rate.

Messages/s is measured between call completions: the rate is (messages of the calls that completed in the
window) / (time from the last completion before the window opened to the last completion inside it), so
no partial call is counted. After ``--duration`` no new call starts and the ones in flight finish, so the
printed totals (``calls``, ``messages``) are exactly what a proxy should have counted over the process's
life, warmup included. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import cast

import hpack

from benchmarks.backend import install_uvloop, pin_to_cpu
from benchmarks.grpc import wire

PATH = b"/bench.Echo/Stream"
BATCH = 4096
"""Messages written per pump and stream; the loop runs in between, so WINDOW_UPDATEs are read meanwhile."""


class StreamClient(asyncio.Protocol):
    def __init__(self, messages: int, payload: int, streams: int) -> None:
        self.messages_per_call = messages
        message = wire.grpc_message(b"\x0a" + bytes([payload - 2]) + b"x" * (payload - 2))
        self.frame_payload = message
        self.frame_size = 9 + len(message)
        self.headers_block = wire.request_headers_block(PATH)
        self.streams_wanted = streams
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.ready = False
        self.conn_window = 65535
        self.initial_window = 65535
        self.next_stream_id = 1
        self.open: dict[int, list[int]] = {}  # stream id -> [messages left to send, send window]
        self.templates: dict[int, tuple[bytes, bytes]] = {}
        self.stopping = False
        self.done = asyncio.get_running_loop().create_future()
        self.completions: list[tuple[float, int]] = []  # (monotonic time, messages) per successful call
        self.calls_started = self.calls_ok = self.calls_failed = self.messages_sent = 0
        self.errors: list[str] = []
        self.paused = False
        self.pump_scheduled = False
        self.received = 0
        self.decoder = hpack.Decoder()

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(
            wire.PREFACE
            + wire.settings((wire.SETTINGS_ENABLE_PUSH, 0), (wire.SETTINGS_INITIAL_WINDOW_SIZE, wire.MAX_WINDOW))
            + wire.window_update(0, wire.MAX_WINDOW - 65535)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.errors.append(f"connection lost ({exc})" if exc else "connection closed by peer")
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        out: list[bytes] = []
        while end - pos >= 9:
            size, kind, flags, stream_id = wire.parse_head(buf, pos)
            if end - pos - 9 < size:
                break
            payload = buf[pos + 9 : pos + 9 + size]
            pos += 9 + size
            if kind == wire.DATA:
                self.received += size
                if self.received >= 1 << 30:
                    out.append(wire.window_update(0, self.received))
                    self.received = 0
                if flags & wire.END_STREAM:
                    self._finished(stream_id, ok=False, why="response ended without trailers")
            elif kind == wire.HEADERS:
                # Every header block is decoded, in order, to keep the HPACK table in step with the peer.
                block = bytes(payload)
                if flags & wire.PADDED:
                    block = block[1 : len(block) - block[0]]
                if flags & wire.PRIORITY:
                    block = block[5:]
                headers = dict(self.decoder.decode(block, raw=True))
                if flags & wire.END_STREAM:  # trailers, or a trailers-only answer
                    status = headers.get(b"grpc-status")
                    self._finished(stream_id, ok=status == b"0", why=f"grpc-status {status!r}")
            elif kind == wire.WINDOW_UPDATE:
                increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if stream_id == 0:
                    self.conn_window += increment
                elif stream_id in self.open:
                    self.open[stream_id][1] += increment
            elif kind == wire.SETTINGS and not flags & wire.ACK:
                new = wire.parse_settings(payload).get(wire.SETTINGS_INITIAL_WINDOW_SIZE)
                if new is not None:
                    for state in self.open.values():
                        state[1] += new - self.initial_window
                    self.initial_window = new
                out.append(wire.frame(wire.SETTINGS, wire.ACK, 0))
                self.ready = True
            elif kind == wire.PING and not flags & wire.ACK:
                out.append(wire.frame(wire.PING, wire.ACK, 0, bytes(payload)))
            elif kind == wire.RST_STREAM:
                self._finished(stream_id, ok=False, why=f"RST_STREAM {int.from_bytes(payload[:4], 'big')}")
            elif kind == wire.GOAWAY:
                self.errors.append(f"GOAWAY {int.from_bytes(payload[4:8], 'big')}")
        self.buf = buf[pos:] if pos < end else b""
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self.pump()

    # -- calls ----------------------------------------------------------------------------------------

    def _finished(self, stream_id: int, ok: bool, why: str) -> None:
        if self.open.pop(stream_id, None) is None:
            return
        self.templates.pop(stream_id, None)
        if ok:
            self.calls_ok += 1
            self.completions.append((time.monotonic(), self.messages_per_call))
        else:
            self.calls_failed += 1
            if len(self.errors) < 5:
                self.errors.append(f"stream {stream_id}: {why}")

    def _pump_again(self) -> None:
        self.pump_scheduled = False
        self.pump()

    def pump(self) -> None:
        """Start calls up to the concurrency, and send DATA as far as the windows allow."""
        transport = self.transport
        if not self.ready or transport is None or self.paused or transport.is_closing():
            return
        out: list[bytes] = []
        while not self.stopping and len(self.open) < self.streams_wanted:
            sid = self.next_stream_id
            self.next_stream_id += 2
            out.append(wire.frame(wire.HEADERS, wire.END_HEADERS, sid, self.headers_block))
            self.open[sid] = [self.messages_per_call, self.initial_window]
            one = wire.frame(wire.DATA, 0, sid, self.frame_payload)
            last = wire.frame(wire.DATA, wire.END_STREAM, sid, self.frame_payload)
            self.templates[sid] = (one, last)
            self.calls_started += 1
        flow = len(self.frame_payload)
        for sid, state in self.open.items():
            left, window = state
            if not left:
                continue
            n = min(left, window // flow, self.conn_window // flow, BATCH)
            if n <= 0:
                continue
            one, last = self.templates[sid]
            if n == left:
                out.append(one * (n - 1) + last)
            else:
                out.append(one * n)
            state[0] = left - n
            state[1] = window - n * flow
            self.conn_window -= n * flow
            self.messages_sent += n
        if out:
            transport.write(b"".join(out))
            if not self.pump_scheduled and any(s[0] and s[1] >= flow for s in self.open.values()):
                self.pump_scheduled = True  # more to send and the window allows: continue next iteration
                asyncio.get_running_loop().call_soon(self._pump_again)
        if self.stopping and not self.open and not self.done.done():
            self.done.set_result(None)


async def run(port: int, host: str, messages: int, payload: int, streams: int, duration: float, warmup: float) -> dict:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: StreamClient(messages, payload, streams), host, port)
    client = cast(StreamClient, client)
    started = time.monotonic()
    await asyncio.sleep(warmup)
    window_open = time.monotonic()
    await asyncio.sleep(duration)
    window_close = time.monotonic()
    client.stopping = True
    client.pump()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(client.done), timeout=30)
    if not client.done.done():
        client.errors.append("calls in flight did not finish within 30 s after the run")
    if client.transport is not None:
        client.transport.close()
    before = [t for t, _ in client.completions if t <= window_open]
    inside = [(t, m) for t, m in client.completions if window_open < t <= window_close]
    t0 = before[-1] if before else window_open
    rate = None
    if inside and inside[-1][0] > t0:
        rate = sum(m for _, m in inside) / (inside[-1][0] - t0)
    return {
        "messages_per_s": rate,
        "calls_in_window": len(inside),
        "calls": client.calls_ok + client.calls_failed,
        "calls_ok": client.calls_ok,
        "calls_failed": client.calls_failed,
        "calls_started": client.calls_started,
        "messages": client.messages_sent,
        "messages_per_call": messages,
        "payload_bytes": payload,
        "streams": streams,
        "elapsed_s": round(time.monotonic() - started, 3),
        "errors": client.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc.stream_load", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=5000, help="messages per call (one DATA frame each)")
    parser.add_argument("--payload", type=int, default=16, help="bytes of protobuf per message (>= 2, < 129)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streaming calls on the connection")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if not 2 <= args.payload < 129:
        parser.error("--payload must be between 2 and 128")
    pin_to_cpu(args.cpu)
    install_uvloop()
    result = asyncio.run(
        run(args.port, args.host, args.messages, args.payload, args.streams, args.duration, args.warmup)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
