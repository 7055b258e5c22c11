"""``MongoRouter``: where each operation goes when a listener balances operations, and what it must
remember for that (cursors, transactions), as a specification over pymongo's own request bytes.

Replies are built with meshproxy's encoder: they stand for what different servers answered, which is the
point of these tests (two servers choosing the same cursor id cannot be provoked on demand).
"""

from __future__ import annotations

import uuid
from typing import Any

from bson.binary import Binary
from bson.int64 import Int64
from filters.wire import decode_one, op_msg

from meshproxy.cluster import Cluster
from meshproxy.codecs.mongo import OpMsg, encode_op_msg
from meshproxy.config import ClusterConfig
from meshproxy.filters.mongo.api import ConnectionInfo, MongoOperation
from meshproxy.stats import StatsStore
from meshproxy.transport.mongo_routing import MongoRouter, Via

INFO = ConnectionInfo(id=1, client="127.0.0.1:1", listener="l", local_address=("127.0.0.1", 2))


def cluster(**options: Any) -> Cluster:
    hosts = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    return Cluster.from_config(ClusterConfig(name="c", hosts=hosts, **options), StatsStore())


def operation(command: dict[str, Any], db: str = "shop") -> MongoOperation:
    return MongoOperation(INFO, decode_one(op_msg(command, db)), 0)


def answer(op: MongoOperation, document: dict[str, Any]) -> None:
    op.response = encode_op_msg(document, request_id=9, response_to=op.request.header.request_id)
    op.replies += 1


def cursor_reply(cursor_id: int, batch: str = "firstBatch") -> dict[str, Any]:
    return {"cursor": {"id": Int64(cursor_id), "ns": "shop.items", batch: [{"_id": 1}]}, "ok": 1.0}


def body(message: Any) -> dict[str, Any]:
    assert isinstance(message, OpMsg)
    return message.document()


def open_cursor(router: MongoRouter, c: Cluster, host_index: int, server_id: int) -> tuple[MongoOperation, int]:
    """A find answered by host ``host_index`` with cursor ``server_id``; returns the id the client sees."""
    op = operation({"find": "items", "batchSize": 1})
    op.routing = router.route(op, c)
    answer(op, cursor_reply(server_id))
    router.on_reply(op, c.hosts[host_index])
    return op, int(body(op.response)["cursor"]["id"])


def address_of(host: Any) -> tuple[str, int]:
    assert host is not None
    return tuple(host.address)  # type: ignore[return-value]


def test_commands_are_balanced_and_handshakes_go_home() -> None:
    router, c = MongoRouter(), cluster()
    picked = [router.route(operation({"find": "items"}), c).host for _ in range(6)]
    assert [h.address[1] for h in picked if h is not None] == [7001, 7002, 7003, 7001, 7002, 7003]
    for handshake in ({"hello": 1}, {"isMaster": 1}, {"saslStart": 1, "mechanism": "SCRAM-SHA-256"}):
        assert router.route(operation(handshake, "admin"), c).via is Via.HOME


def test_a_get_more_follows_its_cursor_to_the_host_that_opened_it() -> None:
    router, c = MongoRouter(), cluster()
    _, client_id = open_cursor(router, c, 2, 0x1234)
    assert client_id == 0x1234  # unique so far: the server's own id, reply untouched
    get_more = operation({"getMore": Int64(client_id), "collection": "items"})
    route = router.route(get_more, c)
    assert (route.via, route.host) == (Via.CURSOR, c.hosts[2])
    assert not get_more.request_replaced
    get_more.routing = route
    answer(get_more, cursor_reply(0, "nextBatch"))  # exhausted: the router forgets it
    router.on_reply(get_more, c.hosts[2])
    assert client_id not in router.cursors


def test_two_hosts_choosing_the_same_cursor_id_get_told_apart() -> None:
    router, c = MongoRouter(), cluster()
    _, first = open_cursor(router, c, 0, 42)
    op, second = open_cursor(router, c, 1, 42)
    assert first == 42
    assert second != 42  # the client sees a fresh id ...
    assert op.response_replaced
    assert router.translated.value == 1
    get_more = operation({"getMore": Int64(second), "collection": "items"})
    route = router.route(get_more, c)
    assert route.host is c.hosts[1]
    assert body(get_more.request)["getMore"] == 42  # ... and host 1 gets back its own
    kill = operation({"killCursors": "items", "cursors": [Int64(second)]})
    assert router.route(kill, c).host is c.hosts[1]
    assert body(kill.request)["cursors"] == [42]
    assert second not in router.cursors
    assert router.cursors[42] == (c.hosts[0], 42)


def test_a_transaction_stays_on_the_host_that_answered_its_first_operation() -> None:
    router, c = MongoRouter(), cluster()
    lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
    start = operation({"insert": "orders", "lsid": lsid, "txnNumber": Int64(1), "startTransaction": True,
                       "autocommit": False})  # fmt: skip
    start.routing = router.route(start, c)
    assert start.routing.via is Via.BALANCED
    answer(start, {"n": 1, "ok": 1.0})
    router.on_reply(start, c.hosts[1])
    for command in (
        {"find": "orders", "lsid": lsid, "txnNumber": Int64(1), "autocommit": False},
        {"commitTransaction": 1, "lsid": lsid, "txnNumber": Int64(1), "autocommit": False},
    ):
        route = router.route(operation(command, "admin" if "commitTransaction" in command else "shop"), c)
        assert (route.via, route.host) == (Via.TRANSACTION, c.hosts[1])
    retryable_write = operation({"insert": "orders", "lsid": lsid, "txnNumber": Int64(2)})
    assert router.route(retryable_write, c).via is Via.BALANCED  # no autocommit: not a transaction


def test_what_the_router_remembers_is_bounded() -> None:
    router, c = MongoRouter(max_entries=3), cluster()
    ids = [open_cursor(router, c, 0, 100 + n)[1] for n in range(5)]
    assert sorted(router.cursors) == ids[2:]  # the oldest two are forgotten
    forgotten = operation({"getMore": Int64(ids[0]), "collection": "items"})
    assert router.route(forgotten, c).via is Via.HOME  # at worst the server says CursorNotFound


def test_hashing_balancers_keep_a_collection_on_one_host() -> None:
    router, c = MongoRouter(), cluster(lb_policy="ring_hash")
    hosts = {address_of(router.route(operation({"find": "orders"}), c).host) for _ in range(20)}
    assert len(hosts) == 1
    by_database = MongoRouter(hash_key="database")
    spread = {address_of(by_database.route(operation({"find": name}), c).host) for name in ("a", "b", "c", "d", "e")}
    assert len(spread) == 1  # one database, one host
