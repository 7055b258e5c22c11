"""The stats filter, fed with pymongo's bytes and SecantusDB's replies."""

from __future__ import annotations

from typing import Any

from bson.int64 import Int64
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.codecs.mongo import summarize_reply
from meshproxy.filters.mongo.stats import MongoStatsFilter
from meshproxy.stats import StatsStore

from .wire import EXHAUST_ALLOWED, MORE_TO_COME, Chain, Wire, legacy_is_master, op_msg


def values(stats: StatsStore) -> dict[str, int | float]:
    return stats.values()


def histogram(stats: StatsStore, name: str) -> dict[str, Any]:
    return stats.histogram_summary(name)


def prometheus(stats: StatsStore) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/stats/prometheus``, parsed back by prometheus_client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(stats.prometheus().decode())
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset({"prefix": "app", **values}.items())


def stats_chain(stats: StatsStore, **options: object) -> Chain:
    return Chain([MongoStatsFilter(stats, "app", **options)])  # type: ignore[arg-type]


def insert(wire: Wire, chain: Chain, collection: str, documents: list[dict[str, object]], db: str = "app") -> None:
    chain.exchange(wire, op_msg({"insert": collection, "documents": documents}, db))


def test_137_inserts_are_counted_as_137_insert_operations(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    sent = 0
    for i in range(137):
        data = op_msg({"insert": "users137", "documents": [{"_id": i, "name": f"user{i}"}]})
        sent += len(data)
        chain.exchange(wire, data)
    v = values(stats)
    assert v["mongo.app.cmd.insert.total"] == 137
    assert v["mongo.app.op_insert"] == 137
    assert v["mongo.app.op_msg"] == 137
    assert v["mongo.app.op_reply"] == 137
    assert v["mongo.app.db.app.collection.users137.cmd.insert.total"] == 137
    assert v["mongo.app.db.app.collection.users137.cmd.insert.errors"] == 0
    assert v["mongo.app.db.app.collection.users137.cmd.insert.request_bytes"] == sent
    assert v["mongo.app.bytes_in"] == sent
    assert v["mongo.app.op_active"] == 0
    assert histogram(stats, "mongo.app.db.app.collection.users137.cmd.insert.reply_time_ms")["count"] == 137


def test_find_and_three_getmores_follow_the_cursor_lifecycle(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "lifecycle", [{"_id": i} for i in range(11)])
    find = chain.exchange(wire, op_msg({"find": "lifecycle", "filter": {}, "batchSize": 3}))
    assert find.response is not None
    cursor_id = summarize_reply(find.response).cursor_id
    assert cursor_id
    for _ in range(3):
        chain.exchange(wire, op_msg({"getMore": Int64(cursor_id), "collection": "lifecycle", "batchSize": 3}))
    v = values(stats)
    assert v["mongo.app.cursor.opened"] == 1
    assert v["mongo.app.cursor.exhausted"] == 1
    assert v["mongo.app.op_query"] == 1
    assert v["mongo.app.op_get_more"] == 3
    assert v["mongo.app.cmd.find.total"] == 1
    assert v["mongo.app.cmd.getMore.total"] == 3
    assert v["mongo.app.op_reply_valid_cursor"] == 3  # find and the first two getMores
    assert v["mongo.app.collection.lifecycle.query.total"] == 1
    assert v["mongo.app.collection.lifecycle.query.scatter_get"] == 1
    assert v["mongo.app.op_query_scatter_get"] == 1
    assert v["mongo.app.op_query_no_max_time"] == 1
    assert v["mongo.app.db.app.collection.lifecycle.cmd.getMore.total"] == 3
    assert v["mongo.app.op_active"] == 0
    assert v["mongo.app.op_query_active"] == 0
    docs = histogram(stats, "mongo.app.cmd.getMore.reply_num_docs")
    assert docs["count"] == 3
    assert docs["sum"] == 8  # 3 + 3 + 2 of the 11 documents; the find returned the first 3
    assert histogram(stats, "mongo.app.collection.lifecycle.reply_num_docs")["sum"] == 3


def test_killcursors_counts_each_killed_cursor(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "killed", [{"_id": i} for i in range(5)])
    find = chain.exchange(wire, op_msg({"find": "killed", "batchSize": 1}))
    assert find.response is not None
    cursor_id = summarize_reply(find.response).cursor_id
    chain.exchange(wire, op_msg({"killCursors": "killed", "cursors": [Int64(cursor_id)]}))
    v = values(stats)
    assert v["mongo.app.cursor.opened"] == 1
    assert v["mongo.app.cursor.killed"] == 1
    assert v["mongo.app.op_kill_cursors"] == 1
    assert v["mongo.app.db.app.collection.killed.cmd.killCursors.total"] == 1


def test_getmore_on_an_unknown_cursor_counts_cursor_not_found(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    chain.exchange(wire, op_msg({"getMore": Int64(123456789), "collection": "nowhere"}))
    v = values(stats)
    assert v["mongo.app.cursor.not_found"] == 1
    assert v["mongo.app.op_reply_cursor_not_found"] == 1
    assert v["mongo.app.cmd.getMore.error.CursorNotFound"] == 1
    assert v["mongo.app.db.app.collection.nowhere.cmd.getMore.errors"] == 1
    assert v["mongo.app.cursor.exhausted"] == 0


def test_errors_are_counted_by_code_name_including_write_errors(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "dups", [{"_id": 1}])
    insert(wire, chain, "dups", [{"_id": 1}])  # ok: 1 with a DuplicateKey writeError
    chain.exchange(wire, op_msg({"noSuchCommandAtAll": 1}))
    v = values(stats)
    assert v["mongo.app.cmd.insert.error.DuplicateKey"] == 1
    assert v["mongo.app.db.app.collection.dups.cmd.insert.errors"] == 1
    assert v["mongo.app.db.app.collection.dups.cmd.insert.total"] == 2
    assert v["mongo.app.cmd.noSuchCommandAtAll.error.CommandNotFound"] == 1
    assert v["mongo.app.db.app.collection.-.cmd.noSuchCommandAtAll.errors"] == 1


def test_exhaust_replies_are_each_counted_but_the_request_only_once(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "stream", [{"_id": i} for i in range(4)])
    find = chain.exchange(wire, op_msg({"find": "stream", "batchSize": 1}))
    assert find.response is not None
    cursor_id = summarize_reply(find.response).cursor_id
    get_more = chain.exchange(
        wire, op_msg({"getMore": Int64(cursor_id), "collection": "stream", "batchSize": 1}, flags=EXHAUST_ALLOWED)
    )
    assert get_more.replies >= 3  # the rest of the cursor, streamed with moreToCome
    v = values(stats)
    assert v["mongo.app.cmd.getMore.total"] == 1
    assert v["mongo.app.op_get_more"] == 1
    assert v["mongo.app.op_reply"] == 1 + 1 + get_more.replies  # insert, find, the stream
    assert v["mongo.app.op_reply_more_to_come"] == get_more.replies - 1
    assert v["mongo.app.op_query_exhaust"] == 1  # the getMore that was allowed to stream
    assert v["mongo.app.cursor.opened"] == 1
    assert v["mongo.app.cursor.exhausted"] == 1
    assert v["mongo.app.op_active"] == 0
    assert histogram(stats, "mongo.app.cmd.getMore.reply_time_ms")["count"] == get_more.replies


def test_fire_and_forget_write_is_counted_without_waiting_for_a_reply(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    op = chain.exchange(
        wire,
        op_msg({"insert": "w0", "documents": [{"_id": 1}], "writeConcern": {"w": 0}}, flags=MORE_TO_COME),
    )
    assert not op.expects_reply
    v = values(stats)
    assert v["mongo.app.cmd.insert.total"] == 1
    assert v["mongo.app.op_msg_more_to_come"] == 1
    assert v["mongo.app.op_reply"] == 0
    assert v["mongo.app.op_active"] == 0


def test_compressed_requests_are_counted_per_compressor_and_by_their_command(stats: StatsStore) -> None:
    chain = stats_chain(stats)
    for compressor in ("zlib", "snappy", "zstd", "zlib"):
        op, _ = chain.request(op_msg({"find": "packed", "filter": {"_id": 1}}, compressor=compressor))
        assert op.compressed
    v = values(stats)
    assert v["mongo.app.op_compressed"] == 4
    assert v["mongo.app.op_compressed.zlib"] == 2
    assert v["mongo.app.op_compressed.snappy"] == 1
    assert v["mongo.app.op_compressed.zstd"] == 1
    assert v["mongo.app.cmd.find.total"] == 4
    assert v["mongo.app.collection.packed.query.total"] == 4
    assert v["mongo.app.op_active"] == 4
    # The server went away with the four finds unanswered: the gauges return to zero.
    chain.close(active_operations=4, local=False)
    v = values(stats)
    assert v["mongo.app.op_active"] == 0
    assert v["mongo.app.op_query_active"] == 0
    assert v["mongo.app.cx_destroy_remote_with_active_rq"] == 1
    assert v["mongo.app.cx_destroy_local_with_active_rq"] == 0


def test_query_shapes_flags_and_callsites_are_counted_as_envoy_does(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "shapes", [{"_id": i} for i in range(3)])
    chain.exchange(wire, op_msg({"find": "shapes", "filter": {"_id": 1}, "maxTimeMS": 500}))
    chain.exchange(wire, op_msg({"find": "shapes", "filter": {"_id": {"$in": [1, 2]}}, "comment": "checkout"}))
    chain.exchange(wire, op_msg({"find": "shapes", "filter": {"x": 1}, "noCursorTimeout": True}))
    chain.request(op_msg({"find": "shapes", "tailable": True, "awaitData": True}))
    v = values(stats)
    assert v["mongo.app.collection.shapes.query.total"] == 4
    assert v["mongo.app.collection.shapes.query.multi_get"] == 1
    assert v["mongo.app.collection.shapes.query.scatter_get"] == 2
    assert v["mongo.app.op_query_no_max_time"] == 3
    assert v["mongo.app.op_query_no_cursor_timeout"] == 1
    assert v["mongo.app.op_query_tailable_cursor"] == 1
    assert v["mongo.app.op_query_await_data"] == 1
    assert v["mongo.app.collection.shapes.callsite.checkout.query.total"] == 1
    assert v["mongo.app.collection.shapes.callsite.checkout.query.multi_get"] == 1
    assert histogram(stats, "mongo.app.collection.shapes.callsite.checkout.reply_num_docs")["sum"] == 2


def test_a_custom_callsite_field_is_read_from_the_command(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats, callsite_field="comment")
    chain.exchange(wire, op_msg({"find": "calls", "filter": {}, "comment": "nightly-report"}))
    assert values(stats)["mongo.app.collection.calls.callsite.nightly-report.query.total"] == 1


def test_legacy_op_query_ismaster_is_counted_as_envoy_counts_it(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    op = chain.exchange(wire, legacy_is_master())
    assert op.command == "isMaster"
    v = values(stats)
    assert v["mongo.app.op_query"] == 1
    assert v["mongo.app.op_legacy"] == 1
    assert v["mongo.app.cmd.isMaster.total"] == 1
    assert v["mongo.app.op_reply"] == 1
    assert v["mongo.app.db.admin.collection.-.cmd.isMaster.total"] == 1
    assert "mongo.app.collection.$cmd.query.total" not in v


def test_per_collection_off_keeps_command_stats_only(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats, per_collection=False)
    insert(wire, chain, "quiet", [{"_id": 1}])
    chain.exchange(wire, op_msg({"find": "quiet"}))
    v = values(stats)
    assert v["mongo.app.cmd.insert.total"] == 1
    assert v["mongo.app.op_query_scatter_get"] == 1
    assert not [name for name in v if ".collection." in name]


def test_distinct_names_beyond_the_bound_are_folded_into_overflow(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats, max_keys=3)
    for i in range(6):
        chain.exchange(wire, op_msg({"count": f"c{i}"}))
    v = values(stats)
    assert v["mongo.app.cmd.count.total"] == 6
    namespaced = {name: value for name, value in v.items() if name.endswith(".cmd.count.total") and ".db." in name}
    assert len(namespaced) == 3
    assert v["mongo.app.db._overflow.collection._overflow.cmd._overflow.total"] == 3


def test_collection_names_with_spaces_are_counted_and_labelled_as_sent(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "my things", [{"_id": 1}])
    assert values(stats)["mongo.app.db.app.collection.my%20things.cmd.insert.total"] == 1
    assert prometheus(stats)[
        ("meshproxy_mongo_command_total", labels(db="app", collection="my things", command="insert"))
    ] == 1


def test_prometheus_output_has_the_labelled_families(stats: StatsStore, wire: Wire) -> None:
    chain = stats_chain(stats)
    insert(wire, chain, "prom", [{"_id": 1}])
    insert(wire, chain, "prom", [{"_id": 1}])
    chain.exchange(wire, op_msg({"find": "prom", "filter": {}}))
    samples = prometheus(stats)
    insert_labels = labels(db="app", collection="prom", command="insert")
    find_labels = labels(db="app", collection="prom", command="find")
    assert samples[("meshproxy_mongo_command_total", insert_labels)] == 2
    assert samples[("meshproxy_mongo_command_errors_total", insert_labels)] == 1
    assert samples[("meshproxy_mongo_command_request_bytes_total", insert_labels)] > 0
    assert samples[("meshproxy_mongo_cmd_error_total", labels(command="insert", code_name="DuplicateKey"))] == 1
    assert samples[("meshproxy_mongo_cmd_total", labels(command="find"))] == 1
    assert samples[("meshproxy_mongo_collection_query_total", labels(collection="prom"))] == 1
    assert samples[("meshproxy_mongo_op_insert_total", labels())] == 2
    assert samples[("meshproxy_mongo_op_active", labels())] == 0
    assert samples[("meshproxy_mongo_command_duration_ms_count", find_labels)] == 1
    assert samples[("meshproxy_mongo_cmd_reply_num_docs_bucket", labels(command="find", le="+Inf"))] == 1
