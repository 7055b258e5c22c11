"""Graceful drain: leaving ``ProxyThread`` stops accepting at once but lets in-flight operations finish.

Two kinds of slow operation are in flight when the drain starts: one slow at the server (SecantusDB's
``failCommand`` fail point blocks the connection) and one held by the proxy itself (the fault filter's
delay). Both must complete with their real result, while a new connection is refused.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo import MongoClient
from support.wait import wait_for

from meshproxy.config import MeshConfig
from meshproxy.proxy import ProxyThread

from .support import PREFIX, SERVER_SELECTION_MS, client_for, sidecar_config

pytestmark = pytest.mark.integration

SLOW_SECONDS = 1.0


@dataclass
class Outcome:
    result: Any = None
    error: BaseException | None = None
    finished_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, Outcome]:
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.result = fn()
        except BaseException as exc:
            outcome.error = exc
        finally:
            outcome.finished_at = time.monotonic()
            outcome.done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def connection_refused(address: tuple[str, int]) -> bool:
    """True once a new connection is refused outright.

    While the listening socket is being closed, a connect that raced into its backlog may be reset
    instead; that is not yet the refusal asserted here, so it reads False and the caller polls again.
    """
    try:
        with socket.create_connection(address, timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def drain_while_a_find_is_in_flight(config: MeshConfig, before_find: Callable[[], None]) -> None:
    proxy = ProxyThread(config)
    proxy.start()
    stats = proxy.stats
    address = proxy.listener_address(PREFIX)
    mongo: MongoClient[dict[str, Any]] = client_for(address, socketTimeoutMS=10_000, serverSelectionTimeoutMS=500)
    try:
        mongo.drain.slow.delete_many({})
        mongo.drain.slow.insert_one({"_id": 1, "payload": "kept"})
        before_find()

        finder, found = in_background(lambda: mongo.drain.slow.find_one({"_id": 1}))
        wait_for(lambda: stats.values().get(f"mongo.{PREFIX}.cmd.find.total", 0) == 1, "the find", interval=0.005)
        started = time.monotonic()
        stopper, stopped = in_background(proxy.stop)

        # New connections are refused while the find is still on its way.
        wait_for(lambda: connection_refused(address), "the listener closed", timeout=SLOW_SECONDS / 2, interval=0.005)
        assert not found.done.is_set(), "the slow find finished before the drain could be observed"

        assert found.done.wait(SLOW_SECONDS * 5)
        assert stopped.done.wait(SLOW_SECONDS * 5)
        finder.join()
        stopper.join()
    finally:
        mongo.close()
        proxy.stop()

    assert found.error is None, f"the in-flight find failed: {found.error!r}"
    assert found.result == {"_id": 1, "payload": "kept"}
    assert found.finished_at - started >= SLOW_SECONDS * 0.5
    assert stopped.error is None
    assert stopped.finished_at - started >= SLOW_SECONDS * 0.5  # the drain waited for the find
    values = stats.values()
    # Only the drivers' parked monitoring hellos may be cut by the drain, never the find.
    assert values[f"mongo.{PREFIX}.db.drain.collection.slow.cmd.find.total"] == 1
    assert values[f"mongo.{PREFIX}.db.drain.collection.slow.cmd.find.errors"] == 0
    assert values[f"mongo.{PREFIX}.cx_drain_close"] >= 1


def test_drain_lets_a_find_slow_at_the_server_finish_and_refuses_new_connections(
    secantus: tuple[str, int],
) -> None:
    host, port = secantus

    def block_the_next_find_at_the_server() -> None:
        direct: MongoClient[dict[str, Any]] = MongoClient(
            f"mongodb://{host}:{port}/?directConnection=true", serverSelectionTimeoutMS=SERVER_SELECTION_MS
        )
        with direct:
            direct.admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": {"times": 1},
                    "data": {
                        "failCommands": ["find"],
                        "blockConnection": True,
                        "blockTimeMS": int(SLOW_SECONDS * 1000),
                    },
                }
            )

    drain_while_a_find_is_in_flight(sidecar_config(secantus), block_the_next_find_at_the_server)

