"""Fault injection: delays and aborts by percentage and match, on pymongo's own request bytes."""

from __future__ import annotations

import random

import pytest

from meshproxy.codecs.mongo import MongoDecoder, OpMsg, OpReply, encode, summarize_reply
from meshproxy.config import FaultFilterConfig
from meshproxy.filters.mongo.api import Delay, LocalReply
from meshproxy.filters.mongo.fault import MongoFaultFilter
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.stats import StatsStore

from .wire import MORE_TO_COME, Chain, Wire, decode_one, legacy_is_master, op_msg


def fault(stats: StatsStore, seed: int = 1, **config: object) -> MongoFaultFilter:
    return MongoFaultFilter(FaultFilterConfig.model_validate(config), stats, "app", random=random.Random(seed))


FIND = op_msg({"find": "orders", "filter": {"status": "open"}}, "shop")
INSERT = op_msg({"insert": "orders", "documents": [{"_id": 1}]}, "shop")
HELLO = op_msg({"hello": 1, "helloOk": True}, "admin")


def test_a_delay_is_returned_with_the_configured_duration_and_counted(stats: StatsStore) -> None:
    chain = Chain([fault(stats, delay={"duration": "250ms"})])
    _, action = chain.request(FIND)
    assert action == Delay(0.25)
    v = stats.values()
    assert v["mongo.app.delay_injected"] == 1
    assert v["mongo.app.cmd.find.delay_injected"] == 1
    assert v["mongo.app.abort_injected"] == 0


def test_percentage_zero_never_faults_and_one_hundred_always_does(stats: StatsStore) -> None:
    never = Chain([fault(stats, delay={"duration": 1, "percentage": 0}, abort={"percentage": 0})])
    always = Chain([fault(stats, abort={"percentage": 100})])
    for _ in range(200):
        assert never.request(FIND)[1] is None
        assert isinstance(always.request(FIND)[1], LocalReply)
    assert stats.values()["mongo.app.abort_injected"] == 200


def test_a_percentage_faults_about_that_share_of_operations(stats: StatsStore) -> None:
    chain = Chain([fault(stats, seed=7, delay={"duration": "1ms", "percentage": 30})])
    delayed = sum(chain.request(FIND)[1] is not None for _ in range(2000))
    assert 500 < delayed < 700


def test_the_abort_reply_decodes_to_ok_0_with_the_configured_code(stats: StatsStore) -> None:
    chain = Chain(
        [fault(stats, abort={"code": 91, "code_name": "ShutdownInProgress", "message": "chaos drill"})]
    )
    op, action = chain.request(FIND)
    assert isinstance(action, LocalReply)
    assert op.local_reply
    [reply] = MongoDecoder().feed(encode(action.reply))
    assert isinstance(reply, OpMsg)
    assert reply.header.response_to == op.request.header.request_id
    document = reply.document()
    assert document["ok"] == 0
    assert document["code"] == 91
    assert document["codeName"] == "ShutdownInProgress"
    assert document["errmsg"] == "chaos drill"
    summary = summarize_reply(reply)
    assert (summary.ok, summary.code, summary.code_name) == (False, 91, "ShutdownInProgress")


def test_an_aborted_legacy_query_is_answered_with_an_op_reply(stats: StatsStore) -> None:
    chain = Chain([fault(stats, abort={}, match={"command": ["isMaster"]})])
    _, action = chain.request(legacy_is_master(request_id=4242))
    assert isinstance(action, LocalReply)
    reply = decode_one(encode(action.reply))
    assert isinstance(reply, OpReply)
    assert reply.header.response_to == 4242
    summary = summarize_reply(reply)
    assert not summary.ok
    assert summary.code == 2


@pytest.mark.parametrize(
    ("match", "faulted"),
    [
        ({}, {"find", "insert"}),
        ({"command": ["insert"]}, {"insert"}),
        ({"database": ["shop"]}, {"find", "insert"}),
        ({"database": ["other"]}, set()),
        ({"collection": ["orders"], "command": ["find", "insert"]}, {"find", "insert"}),
        ({"collection": ["customers"]}, set()),
    ],
)
def test_only_operations_the_match_selects_are_faulted(
    stats: StatsStore, match: dict[str, list[str]], faulted: set[str]
) -> None:
    chain = Chain([fault(stats, abort={}, match=match)])
    hit = {op.command for op, action in (chain.request(FIND), chain.request(INSERT)) if action is not None}
    assert hit == faulted


def test_handshake_commands_are_never_faulted_unless_named(stats: StatsStore) -> None:
    everything = Chain([fault(stats, abort={}, delay={"duration": 1})])
    for handshake in (HELLO, legacy_is_master(), op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256"}, "admin")):
        assert everything.request(handshake)[1] is None
    named = Chain([fault(stats, abort={}, match={"command": ["hello"]})])
    assert isinstance(named.request(HELLO)[1], LocalReply)


def test_fire_and_forget_writes_are_delayed_but_never_aborted(stats: StatsStore) -> None:
    w0 = op_msg({"insert": "orders", "documents": [{"_id": 2}], "writeConcern": {"w": 0}}, "shop", flags=MORE_TO_COME)
    assert Chain([fault(stats, abort={})]).request(w0)[1] is None
    assert Chain([fault(stats, abort={}, delay={"duration": 2})]).request(w0)[1] == Delay(2.0)


def test_an_abort_wins_over_a_delay_when_both_fire(stats: StatsStore) -> None:
    _, action = Chain([fault(stats, abort={}, delay={"duration": 1})]).request(FIND)
    assert isinstance(action, LocalReply)


def test_stats_before_the_fault_count_the_injected_error(stats: StatsStore, wire: Wire) -> None:
    counting = MongoStatsFilter(stats, "app")
    chain = Chain([counting, fault(stats, abort={"code": 11600, "code_name": "InterruptedAtShutdown"})])
    chain.request(FIND)
    v = stats.values()
    assert v["mongo.app.cmd.find.total"] == 1
    assert v["mongo.app.cmd.find.error.InterruptedAtShutdown"] == 1
    assert v["mongo.app.op_active"] == 0


def test_filters_after_an_aborting_fault_never_see_the_operation(stats: StatsStore) -> None:
    chain = Chain([fault(stats, abort={}), MongoStatsFilter(stats, "app")])
    _, action = chain.request(FIND)
    assert isinstance(action, LocalReply)
    v = stats.values()
    assert v.get("mongo.app.cmd.find.total", 0) == 0
    assert v["mongo.app.op_reply"] == 0
    assert v["mongo.app.abort_injected"] == 1
