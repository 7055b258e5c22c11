"""Topology rewrite of SecantusDB's real hello / isMaster replies, judged by pymongo's own SDAM parser."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pymongo import message as pymongo_message
from pymongo.compression_support import ZlibContext
from pymongo.hello import Hello
from pymongo.server_type import SERVER_TYPE

from meshproxy.codecs.mongo import MongoMessage, OpMsg, OpReply, encode
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.filters.mongo.topology import TopologyRewriteFilter, advertised_host_port
from meshproxy.stats import StatsStore

from .wire import EXHAUST_ALLOWED, MORE_TO_COME, Chain, Wire, decode_one, legacy_is_master, op_msg

PROXY = ("127.0.0.1", 27100)


def topology(stats: StatsStore, mode: str = "rewrite", advertise: tuple[str, int] = PROXY) -> TopologyRewriteFilter:
    return TopologyRewriteFilter(stats, "app", mode=mode, advertise=advertise)  # type: ignore[arg-type]


def on_the_wire(message: MongoMessage | None) -> dict[str, Any]:
    """What the client receives: the forwarded bytes, decoded again."""
    assert message is not None
    received = decode_one(encode(message))
    if isinstance(received, OpReply):
        document = received.first_document()
        assert document is not None
        return document
    assert isinstance(received, OpMsg)
    return received.document()


def test_the_upstream_really_advertises_its_own_address(wire: Wire, stats: StatsStore) -> None:
    op = Chain([topology(stats, mode="off")]).exchange(wire, op_msg({"hello": 1}, "admin"))
    assert not op.response_replaced
    document = on_the_wire(op.response)
    assert document["setName"] == "secantus"
    assert document["hosts"] == [document["me"]] == [document["primary"]]
    assert document["me"] != "127.0.0.1:27100"
    assert stats.values()["mongo.app.topology_rewrite"] == 0


def test_rewrite_mode_keeps_a_replica_set_of_one_member_at_the_proxy(wire: Wire, stats: StatsStore) -> None:
    request = op_msg({"hello": 1}, "admin")
    op = Chain([topology(stats)]).exchange(wire, request)
    assert op.response_replaced
    document = on_the_wire(op.response)
    assert document["hosts"] == ["127.0.0.1:27100"]
    assert document["me"] == document["primary"] == "127.0.0.1:27100"
    assert document["setName"] == "secantus"
    assert "passives" not in document
    assert "arbiters" not in document
    assert "topologyVersion" in document
    assert op.response is not None
    assert op.response.header.response_to == decode_one(request).header.request_id
    hello = Hello(document)
    assert hello.server_type == SERVER_TYPE.RSPrimary
    assert hello.all_hosts == {("127.0.0.1", 27100)}
    assert stats.values()["mongo.app.topology_rewrite"] == 1


def test_standalone_mode_hides_the_replica_set(wire: Wire, stats: StatsStore) -> None:
    op = Chain([topology(stats, mode="standalone")]).exchange(wire, op_msg({"isMaster": 1}, "admin"))
    document = on_the_wire(op.response)
    for field in ("setName", "setVersion", "hosts", "primary", "me", "electionId", "secondary", "lastWrite"):
        assert field not in document
    assert document["ok"] == 1
    assert document["maxWireVersion"] > 0
    assert Hello(document).server_type == SERVER_TYPE.Standalone


def test_off_mode_forwards_the_reply_untouched(wire: Wire, stats: StatsStore) -> None:
    op = Chain([topology(stats, mode="off")]).exchange(wire, op_msg({"hello": 1}, "admin"))
    assert not op.response_replaced
    assert Hello(on_the_wire(op.response)).server_type == SERVER_TYPE.RSPrimary


def test_a_legacy_op_query_ismaster_gets_its_op_reply_rewritten(wire: Wire, stats: StatsStore) -> None:
    op = Chain([topology(stats)]).exchange(wire, legacy_is_master(request_id=99))
    assert op.response_replaced
    assert isinstance(op.response, OpReply)
    received = decode_one(encode(op.response))
    assert isinstance(received, OpReply)
    assert received.header.response_to == 99
    assert received.number_returned == 1
    document = received.first_document()
    assert document is not None
    assert document["hosts"] == ["127.0.0.1:27100"]
    assert document["me"] == "127.0.0.1:27100"
    assert Hello(document).server_type == SERVER_TYPE.RSPrimary


def test_legacy_ismaster_in_standalone_mode(wire: Wire, stats: StatsStore) -> None:
    op = Chain([topology(stats, mode="standalone")]).exchange(wire, legacy_is_master())
    assert Hello(on_the_wire(op.response)).server_type == SERVER_TYPE.Standalone


def test_every_reply_of_a_streamed_awaitable_hello_is_rewritten(wire: Wire, stats: StatsStore) -> None:
    chain = Chain([topology(stats)])
    first = chain.exchange(wire, op_msg({"hello": 1}, "admin"))
    topology_version = on_the_wire(first.response)["topologyVersion"]
    streamed = op_msg(
        {"hello": 1, "topologyVersion": topology_version, "maxAwaitTimeMS": 50}, "admin", flags=EXHAUST_ALLOWED
    )
    op, _ = chain.request(streamed)
    wire.send(streamed)
    for expected_replies in (1, 2):
        chain.reply(op, wire.receive())
        assert op.replies == expected_replies
        assert op.response_replaced
        assert isinstance(op.response, OpMsg)
        assert op.response.flag_bits & MORE_TO_COME  # the stream goes on: the flag survives the rewrite
        assert on_the_wire(op.response)["hosts"] == ["127.0.0.1:27100"]
    assert stats.values()["mongo.app.topology_rewrite"] == 3


def test_other_replies_are_not_decoded(wire: Wire, stats: StatsStore) -> None:
    chain = Chain([topology(stats)])
    op = chain.exchange(wire, op_msg({"ping": 1}, "admin"))
    assert not op.response_replaced
    assert isinstance(op.response, OpMsg)
    assert op.response._document is None


def test_stats_see_the_rewritten_reply_and_still_count_it(wire: Wire, stats: StatsStore) -> None:
    chain = Chain([MongoStatsFilter(stats, "app"), topology(stats)])
    chain.exchange(wire, op_msg({"hello": 1}, "admin"))
    v = stats.values()
    assert v["mongo.app.cmd.hello.total"] == 1
    assert v["mongo.app.op_reply"] == 1
    assert v["mongo.app.topology_rewrite"] == 1


@pytest.mark.parametrize(
    ("address", "advertised"),
    [
        (("0.0.0.0", 27017), "127.0.0.1:27017"),
        (("::", 27017), "127.0.0.1:27017"),
        (("::1", 27018), "[::1]:27018"),
        (("10.1.2.3", 27019), "10.1.2.3:27019"),
    ],
)
def test_the_advertised_address_is_one_a_driver_can_dial(address: tuple[str, int], advertised: str) -> None:
    assert advertised_host_port(address) == advertised


def test_a_compressed_hello_reply_is_rewritten_and_sent_uncompressed(wire: Wire, stats: StatsStore) -> None:
    chain = Chain([topology(stats)])
    request = op_msg({"hello": 1}, "admin")
    op, _ = chain.request(request)
    wire.send(request)
    plain = wire.receive()
    # The reply as a server that negotiated zlib would send it: pymongo's own compressor, then the
    # responseTo of the original reply put back into the header (pymongo compresses requests, which have none).
    _, compressed = pymongo_message._compress(2013, plain.raw[16:], ZlibContext(-1))
    compressed = compressed[:8] + struct.pack("<i", plain.header.response_to) + compressed[12:]
    chain.reply(op, compressed)
    assert op.response_replaced
    assert isinstance(op.response, OpMsg)
    document = on_the_wire(op.response)
    assert document["hosts"] == ["127.0.0.1:27100"]
    assert op.response.header.response_to == plain.header.response_to
