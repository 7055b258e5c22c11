"""Bad bytes on one connection close that connection only; the proxy's memory does not follow a header's claims.

Each malformed input is a variant of bytes pymongo itself produced (or plain random bytes), sent on its
own raw socket to the sidecar while a real pymongo client works through the same sidecar before and
after. The proxy must close the bad connection, count one ``decoding_error``, and never forward a
malformed message (SecantusDB would otherwise answer it and the socket would see bytes).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import crc32c
import pytest
from bson.codec_options import CodecOptions
from pymongo import MongoClient, ReadPreference
from pymongo import message as pymongo_message

from meshproxy.codecs.errors import DecodeError
from meshproxy.codecs.mongo import MongoDecoder
from meshproxy.proxy import ProxyThread

from .support import PREFIX

pytestmark = pytest.mark.integration

Client = MongoClient[dict[str, Any]]

CLOSE_TIMEOUT = 5.0


def pymongo_op_msg(command: dict[str, Any], db: str = "badinput") -> bytes:
    """The OP_MSG bytes pymongo's own encoder produces for ``command``."""
    return bytes(pymongo_message._op_msg(0, {**command, "$db": db}, db, ReadPreference.PRIMARY, CodecOptions())[1])


def insert_message() -> bytes:
    return pymongo_op_msg({"insert": "victims", "documents": [{"_id": 1, "v": "x" * 64}]})


def with_length(message: bytearray | bytes) -> bytes:
    data = bytearray(message)
    struct.pack_into("<i", data, 0, len(data))
    return bytes(data)


def random_bytes() -> bytes:
    return random.Random(2026).randbytes(512)


def header_declaring(size: int, body: int = 64) -> bytes:
    """A real message whose length field claims ``size`` bytes; ``body`` bytes of it follow."""
    real = insert_message()
    return struct.pack("<i", size) + real[4:] + b"\x00" * max(0, body - len(real) + 16)


def invalid_bson() -> bytes:
    data = bytearray(insert_message())
    # Offset 25 is the type byte of the body's first element (header 16, flagBits 4, kind 1, length 4).
    assert data[25] == 0x02
    data[25] = 0x77
    return bytes(data)


def wrong_checksum() -> bytes:
    data = bytearray(insert_message())
    struct.pack_into("<I", data, 16, struct.unpack_from("<I", data, 16)[0] | 1)  # checksumPresent
    good = crc32c.crc32c(bytes(with_length(data + b"\x00" * 4)[:-4]))
    return with_length(data + struct.pack("<I", good ^ 0xDEADBEEF))


def unknown_opcode() -> bytes:
    data = bytearray(insert_message())
    struct.pack_into("<i", data, 12, 2999)
    return bytes(data)


BAD_INPUTS: dict[str, Callable[[], bytes]] = {
    "random_bytes": random_bytes,
    "header_declaring_2gb": lambda: header_declaring(2_000_000_000),
    "invalid_bson": invalid_bson,
    "wrong_checksum": wrong_checksum,
    "unknown_opcode": unknown_opcode,
}


def closed_by_peer(sock: socket.socket, timeout: float = CLOSE_TIMEOUT) -> bool:
    """True when the peer closed (EOF or reset) without sending a byte; False if it sent anything."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return True
    return data == b""


def decoding_errors(proxy: ProxyThread) -> float:
    return proxy.stats.values()[f"mongo.{PREFIX}.decoding_error"]


def wait_for(predicate: Callable[[], bool], timeout: float = CLOSE_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def exercise(client: Client, mark: str) -> None:
    """A round trip that must keep working through the sidecar."""
    things = client.badinput.healthy
    things.insert_one({"_id": mark})
    assert things.find_one({"_id": mark}) == {"_id": mark}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_message_closes_only_its_own_connection_and_counts_one_decoding_error(
    client: Client, sidecar: ProxyThread, name: str
) -> None:
    bad = BAD_INPUTS[name]()
    with pytest.raises(DecodeError):
        MongoDecoder().feed(bad)  # the input really is malformed, as meshproxy's codec sees it
    exercise(client, f"{name}-before")
    errors_before = decoding_errors(sidecar)

    with socket.create_connection(sidecar.listener_address(PREFIX), timeout=CLOSE_TIMEOUT) as raw:
        raw.sendall(bad)
        assert closed_by_peer(raw)

    assert wait_for(lambda: decoding_errors(sidecar) == errors_before + 1)
    exercise(client, f"{name}-after")
    assert client.badinput.victims.count_documents({}) == 0  # nothing malformed reached the server
    assert decoding_errors(sidecar) == errors_before + 1


def send_half_then_close(proxy: ProxyThread) -> None:
    message = insert_message()
    with socket.create_connection(proxy.listener_address(PREFIX), timeout=CLOSE_TIMEOUT) as raw:
        raw.sendall(message[: len(message) // 2])
        raw.shutdown(socket.SHUT_WR)
        assert closed_by_peer(raw)


def test_a_truncated_message_then_close_counts_one_decoding_error_and_is_never_forwarded(
    client: Client, sidecar: ProxyThread
) -> None:
    exercise(client, "truncated-before")
    errors_before = decoding_errors(sidecar)
    send_half_then_close(sidecar)
    assert wait_for(lambda: decoding_errors(sidecar) == errors_before + 1)
    exercise(client, "truncated-after")
    assert client.badinput.victims.count_documents({}) == 0
    assert decoding_errors(sidecar) == errors_before + 1


@pytest.mark.parametrize(("declared", "sent"), [(2_000_000_000, 1 << 20), (40_000_000, 1 << 20)])
def test_memory_does_not_grow_with_the_size_a_header_declares(
    client: Client, sidecar: ProxyThread, declared: int, sent: int
) -> None:
    """The proxy runs in this process (a thread), so tracemalloc sees its allocations.

    2 GB is over the message limit (refused from the header); 40 MB is under it, so the proxy waits for
    the rest, holding only what really arrived (``sent``), never a buffer of the declared size.
    """
    exercise(client, f"memory-{declared}-before")
    errors_before = decoding_errors(sidecar)
    payload = header_declaring(declared, body=sent)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with socket.create_connection(sidecar.listener_address(PREFIX), timeout=CLOSE_TIMEOUT) as raw:
            # Refused from the header, the proxy may close before taking everything.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                raw.sendall(payload)
            time.sleep(0.2)  # let the proxy read what was sent
            with contextlib.suppress(OSError):  # already reset when refused from the header
                raw.shutdown(socket.SHUT_WR)
            assert closed_by_peer(raw)
        if declared > sidecar.config.listeners[0].max_message_size:
            assert wait_for(lambda: decoding_errors(sidecar) == errors_before + 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    growth = peak - baseline
    # The 1 MiB that really arrived may be held (and copied once); 40 MB or 2 GB may not.
    assert growth < 8 * (1 << 20), f"peak grew by {growth} bytes for a header declaring {declared}"
    if declared <= sidecar.config.listeners[0].max_message_size:
        # The instrument does see the proxy thread: the part that really arrived was buffered.
        assert growth >= sent // 2
    exercise(client, f"memory-{declared}-after")
