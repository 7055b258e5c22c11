"""Stopping the sidecar drains it: in-flight operations finish, idle connections close at once, no new ones.

The in-flight operation is a ``find`` held for 0.5 s by the fault filter's delay, so the drain starts
while the proxy itself still owns it. Alongside it sits an idle raw connection that has completed a
``ping``: it has nothing in flight, so the drain closes it right away instead of waiting for the find.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import pytest
from bson.codec_options import CodecOptions
from pymongo import ReadPreference
from pymongo import message as pymongo_message

from meshproxy.proxy import ProxyThread

from .support import PREFIX, client_for, sidecar_config

pytestmark = pytest.mark.integration

DELAY = 0.5

FILTERS: list[Any] = [
    {"type": "stats"},
    {"type": "fault", "delay": {"duration": f"{DELAY}s", "percentage": 100}, "match": {"command": ["find"]}},
    {"type": "topology_rewrite"},
]


def pymongo_ping() -> bytes:
    _, data, _, _ = pymongo_message._op_msg(
        0, {"ping": 1, "$db": "admin"}, "admin", ReadPreference.PRIMARY, CodecOptions()
    )
    return bytes(data)


def refused(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stopping_lets_a_delayed_find_finish_closes_idle_connections_and_refuses_new_ones(
    secantus: tuple[str, int],
) -> None:
    proxy = ProxyThread(sidecar_config(secantus, filters=FILTERS))
    proxy.start()
    stats = proxy.stats
    address = proxy.listener_address(PREFIX)
    mongo = client_for(address, socketTimeoutMS=10_000, serverSelectionTimeoutMS=1000)
    idle = socket.create_connection(address, timeout=5)
    try:
        notes = mongo.drain_it.notes
        notes.delete_many({})
        notes.insert_one({"_id": "n", "text": "survives the drain"})
        idle.sendall(pymongo_ping())
        reply = idle.recv(65536)
        assert struct.unpack_from("<i", reply)[0] == len(reply)

        found: dict[str, Any] = {}

        def find() -> None:
            try:
                found["doc"] = notes.find_one({"_id": "n"})
            except BaseException as error:  # reported by the assertions below
                found["error"] = error
            found["at"] = time.monotonic()

        finder = threading.Thread(target=find)
        finder.start()
        deadline = time.monotonic() + 5
        while stats.values().get(f"mongo.{PREFIX}.cmd.find.delay_injected", 0) < 1:
            assert time.monotonic() < deadline, "the find never reached the fault filter"
            time.sleep(0.005)

        drain_started = time.monotonic()
        stopper = threading.Thread(target=proxy.stop)
        stopper.start()

        # The idle connection is closed straight away, long before the delayed find is released.
        assert closed_within(idle, DELAY / 2)
        # The listener no longer accepts.
        assert refused(address)
        assert "at" not in found, "the find finished before the drain could be observed"

        finder.join(5)
        stopper.join(5)
        assert not stopper.is_alive()
    finally:
        idle.close()
        mongo.close()
        proxy.stop()

    assert "error" not in found, f"the in-flight find failed: {found.get('error')!r}"
    assert found["doc"] == {"_id": "n", "text": "survives the drain"}
    assert found["at"] - drain_started >= DELAY * 0.5
    values = stats.values()
    assert values[f"mongo.{PREFIX}.cmd.find.total"] == 1
    assert values[f"mongo.{PREFIX}.db.drain_it.collection.notes.cmd.find.errors"] == 0
    # At least the idle raw connection and the finder's connection (once its find was answered); the
    # driver's monitoring connections, parked in an awaitable hello, are closed by the drain as well.
    assert values[f"mongo.{PREFIX}.cx_drain_close"] >= 2
    # Operations cut by the close (the parked hellos) leave the active-operations gauge too.
    assert values[f"mongo.{PREFIX}.op_active"] == 0


def test_a_client_half_close_waits_for_requests_a_fault_delay_still_holds(secantus: tuple[str, int]) -> None:
    """A client may send its last request and shut its write side at once. When a delay holds that request,
    the proxy must pass the half-close upstream only after the request itself, and still deliver the reply."""
    with ProxyThread(sidecar_config(secantus, filters=FILTERS)) as proxy:
        _, find, _, _ = pymongo_message._op_msg(
            0, {"find": "notes", "filter": {}, "$db": "drain_it"}, "drain_it", ReadPreference.PRIMARY, CodecOptions()
        )
        with socket.create_connection(proxy.listener_address(PREFIX), timeout=5) as sock:
            sock.sendall(bytes(find))
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert len(reply) > 16
        assert struct.unpack_from("<i", reply)[0] == len(reply)
        assert struct.unpack_from("<i", reply, 8)[0] == struct.unpack_from("<i", find, 4)[0]
        assert b"\x01ok\x00" in reply
        assert proxy.stats.values()[f"mongo.{PREFIX}.cmd.find.delay_injected"] == 1
