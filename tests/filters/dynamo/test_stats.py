"""Specification of the DynamoDB stats filter, driven by the exchanges real boto3 had with a real moto server."""

from __future__ import annotations

import json
from collections import Counter as Tally

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshproxy.codecs.dynamo import crc32_of, parse_request
from meshproxy.filters.dynamo.stats import DynamoStatsFilter, SpaceSaving
from meshproxy.stats import StatsStore

from .recorded import CONNECTION, Chain, exchanges, workload

WORKLOAD_OPERATIONS = {
    "CreateTable": 2, "DescribeTable": 1, "PutItem": 2, "GetItem": 3, "UpdateItem": 1, "BatchWriteItem": 1,
    "BatchGetItem": 1, "Query": 1, "Scan": 3, "DeleteItem": 1, "TransactWriteItems": 1, "TransactGetItems": 1,
    "ExecuteStatement": 1,
}
WORKLOAD_TABLES = {"orders": 16, "users": 6, "missing": 1}


def run_workload(stats: StatsStore) -> DynamoStatsFilter:
    f = DynamoStatsFilter(stats, "app")
    chain = Chain([f])
    for exchange in workload():
        chain.run(exchange)
    return f


def test_the_recorded_workload_is_counted_per_operation_exactly() -> None:
    stats = StatsStore()
    run_workload(stats)
    v = stats.values()
    counted = {
        name.split(".")[3]: value
        for name, value in v.items()
        if name.startswith("dynamodb.app.operation.") and name.endswith(".upstream_rq_total")
    }
    assert counted == WORKLOAD_OPERATIONS
    assert v["dynamodb.app.rq_total"] == sum(WORKLOAD_OPERATIONS.values()) == 19
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_2xx"] == 2
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_200"] == 2
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_4xx"] == 1
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_400"] == 1
    assert stats.histogram_summary("dynamodb.app.operation.Scan.upstream_rq_time")["count"] == 3
    assert stats.histogram_summary("dynamodb.app.operation.GetItem.upstream_rq_time_4xx")["count"] == 1


def test_every_table_of_batches_and_transactions_is_counted() -> None:
    stats = StatsStore()
    run_workload(stats)
    v = stats.values()
    counted = {
        name.split(".")[3]: value
        for name, value in v.items()
        if name.startswith("dynamodb.app.table.") and name.endswith(".upstream_rq_total")
    }
    assert counted == WORKLOAD_TABLES
    assert stats.histogram_summary("dynamodb.app.table.users.upstream_rq_time")["count"] == 6
    # Envoy's own accounting of requests that name several tables, or none.
    assert v["dynamodb.app.multiple_tables"] == 4  # two batches, two transactions
    assert v["dynamodb.app.table_missing"] == 0


def test_a_batch_over_two_tables_counts_both_tables_once() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("06_batch_write")
    chain.run(exchange)
    v = stats.values()
    assert v["dynamodb.app.table.orders.upstream_rq_total"] == 1
    assert v["dynamodb.app.table.users.upstream_rq_total"] == 1
    assert v["dynamodb.app.operation.BatchWriteItem.upstream_rq_total"] == 1


def test_a_transaction_counts_every_table_it_touches() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [write] = exchanges("11_transact_write")
    [read] = exchanges("12_transact_get")
    chain.run(write)
    chain.run(read)
    v = stats.values()
    assert v["dynamodb.app.table.orders.upstream_rq_total_200"] == 2
    assert v["dynamodb.app.table.users.upstream_rq_total_200"] == 2


def test_recorded_errors_are_counted_under_their_type_and_table() -> None:
    stats = StatsStore()
    run_workload(stats)
    errors = {name: value for name, value in stats.values().items() if ".error." in name}
    assert errors == {
        "dynamodb.app.error.missing.ResourceNotFoundException": 1,
        "dynamodb.app.error.orders.ConditionalCheckFailedException": 1,
    }


def test_an_error_on_a_5xx_or_on_a_request_without_table_is_counted_too() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("04_get_item")
    op, _, seen = chain.request(exchange.parsed_request(), exchange.request.size)
    body = b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"boom"}'
    chain.respond(op, 500, [(b"x-amz-crc32", str(crc32_of(body)).encode())], body, seen, len(body))
    v = stats.values()
    assert v["dynamodb.app.error.orders.InternalServerError"] == 1
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_5xx"] == 1


def test_consumed_capacity_is_summed_exactly_per_table_and_operation() -> None:
    stats = StatsStore()
    run_workload(stats)
    v = stats.values()
    capacity = {
        name.removeprefix("dynamodb.app.table."): value
        for name, value in v.items()
        if ".capacity." in name and value
    }
    assert capacity == {
        "orders.capacity.PutItem.consumed_milliunits": 1000,
        "orders.capacity.GetItem.consumed_milliunits": 500,  # an eventually consistent read: half a unit
        "orders.capacity.UpdateItem.consumed_milliunits": 500,
        "orders.capacity.BatchWriteItem.consumed_milliunits": 1000,
        "orders.capacity.BatchGetItem.consumed_milliunits": 1000,
        "orders.capacity.Query.consumed_milliunits": 1000,
        "users.capacity.BatchWriteItem.consumed_milliunits": 1000,
        "users.capacity.BatchGetItem.consumed_milliunits": 2000,
    }


def test_read_and_write_units_of_a_transaction_are_counted_per_table() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("11_transact_write")
    op, _, seen = chain.request(exchange.parsed_request(), exchange.request.size)
    document = json.loads(exchange.response.body)  # DynamoDB itself sends one entry per table
    document["ConsumedCapacity"] = [
        {"TableName": "orders", "CapacityUnits": 4.0, "WriteCapacityUnits": 4.0},
        {"TableName": "users", "CapacityUnits": 2.5, "ReadCapacityUnits": 0.5, "WriteCapacityUnits": 2.0},
    ]
    body = json.dumps(document).encode()
    chain.respond(op, 200, [], body, seen, len(body))
    v = stats.values()
    scope = "dynamodb.app.table."
    assert v[scope + "orders.capacity.TransactWriteItems.consumed_write_milliunits"] == 4000
    assert v[scope + "users.capacity.TransactWriteItems.consumed_milliunits"] == 2500
    assert v[scope + "users.capacity.TransactWriteItems.consumed_read_milliunits"] == 500
    assert v[scope + "users.capacity.TransactWriteItems.consumed_write_milliunits"] == 2000


def test_unprocessed_items_and_keys_are_counted_per_table_as_envoy_and_in_number() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("06_batch_write")
    op, _, seen = chain.request(exchange.parsed_request(), exchange.request.size)
    document = json.loads(exchange.response.body)
    document["UnprocessedItems"] = {"orders": [{"PutRequest": {"Item": {}}}] * 2, "users": []}
    document["UnprocessedKeys"] = {"users": {"Keys": [{"pk": {"S": "u1"}}]}}
    body = json.dumps(document).encode()
    chain.respond(op, 200, [], body, seen, len(body))
    v = stats.values()
    assert v["dynamodb.app.error.orders.BatchFailureUnprocessedItems"] == 1
    assert v["dynamodb.app.table.orders.unprocessed_items"] == 2
    assert v["dynamodb.app.error.users.BatchFailureUnprocessedKeys"] == 1
    assert v["dynamodb.app.table.users.unprocessed_keys"] == 1
    assert "dynamodb.app.error.users.BatchFailureUnprocessedItems" not in stats  # an empty list is no failure


def test_partition_capacity_is_counted_when_the_response_carries_partitions() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("04_get_item")
    op, _, seen = chain.request(exchange.parsed_request(), exchange.request.size)
    body = json.dumps(
        {"Item": {}, "ConsumedCapacity": {"TableName": "orders", "CapacityUnits": 1.0,
                                          "Partitions": {"partition-0123456789": 1, "partition-abcdefghij": 3}}}
    ).encode()
    chain.respond(op, 200, [], body, seen, len(body))
    v = stats.values()
    assert v["dynamodb.app.table.orders.capacity.GetItem.__partition_id=3456789"] == 1
    assert v["dynamodb.app.table.orders.capacity.GetItem.__partition_id=defghij"] == 3


def test_bad_requests_and_responses_are_counted_by_what_was_wrong() -> None:
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    [exchange] = exchanges("04_get_item")
    no_target = [(k, v) for k, v in exchange.request.headers if k.lower() != b"x-amz-target"]
    op, _, seen = chain.request(parse_request(no_target, exchange.request.body), 10)
    chain.respond(op, 400, [], b"not json", seen, 8)
    unknown = [*no_target, (b"X-Amz-Target", b"DynamoDB_20120810.Frobnicate")]
    op, _, seen = chain.request(parse_request(unknown, b"{"), 10)
    chain.respond(op, 400, [], b"{}", seen, 2)
    op, _, seen = chain.request(parse_request(exchange.request.headers, b"{not json"), 10)
    chain.respond(op, 200, [], b"{}", seen, 2)
    list_tables = [*no_target, (b"X-Amz-Target", b"DynamoDB_20120810.ListTables")]
    op, _, seen = chain.request(parse_request(list_tables, b"{}"), 10)
    chain.respond(op, 200, [], b'{"TableNames":[]}', seen, 2)
    v = stats.values()
    assert v["dynamodb.app.operation_missing"] == 1
    assert v["dynamodb.app.operation_unknown"] == 1
    assert v["dynamodb.app.invalid_req_body"] == 2  # "{" and "{not json"
    assert v["dynamodb.app.invalid_resp_body"] == 1
    assert v["dynamodb.app.table_missing"] == 2  # the GetItem with a broken body, and ListTables
    assert v["dynamodb.app.rq_total"] == 4


def test_the_active_gauge_follows_requests_and_forgets_a_closed_connection() -> None:
    stats = StatsStore()
    f = DynamoStatsFilter(stats, "app")
    chain = Chain([f])
    [exchange] = exchanges("04_get_item")
    first, _, seen = chain.request(exchange.parsed_request(), 1)
    chain.request(exchange.parsed_request(), 1)
    assert stats.values()["dynamodb.app.rq_active"] == 2
    chain.respond(first, 200, [], exchange.response.body, seen, 1)
    assert stats.values()["dynamodb.app.rq_active"] == 1
    f.on_connection_close(CONNECTION, active_operations=1, local=False)
    assert stats.values()["dynamodb.app.rq_active"] == 0


def test_hot_partition_keys_of_the_workload_use_the_learned_key_schema() -> None:
    f = run_workload(StatsStore())
    # orders has a (pk, sk) key: CreateTable taught the filter that pk is the partition key.
    # c1: GetItem, PutItem, UpdateItem, Query (pk = :c), DeleteItem, the failed conditional PutItem.
    assert f.hot_keys("orders") == [("c1", 6)]
    assert f.hot_keys("users") == [("u2", 1)]
    assert f.hot_keys("nope") == []


def test_a_query_counts_the_partition_key_of_its_key_condition() -> None:
    stats = StatsStore()
    f = DynamoStatsFilter(stats, "app")
    chain = Chain([f])
    chain.run(exchanges("00_create_orders")[0])  # teaches the filter that pk is the partition key
    [query] = exchanges("08_query")
    conditions: list[dict[str, object]] = [
        {"KeyConditionExpression": "pk = :c", "ExpressionAttributeValues": {":c": {"S": "a"}}},
        {"KeyConditionExpression": "#p = :v AND sk >= :s", "ExpressionAttributeNames": {"#p": "pk"},
         "ExpressionAttributeValues": {":v": {"S": "b"}, ":s": {"S": "x"}}},
        {"KeyConditionExpression": "sk <= :s AND :v = pk",
         "ExpressionAttributeValues": {":v": {"S": "c"}, ":s": {"S": "x"}}},
        {"KeyConditions": {"pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "d"}]}}},
        # Not the table's partition key: an index (its own key) and a condition on the sort key only.
        {"IndexName": "by_sk", "KeyConditionExpression": "pk = :c", "ExpressionAttributeValues": {":c": {"S": "e"}}},
        {"KeyConditionExpression": "sk = :c", "ExpressionAttributeValues": {":c": {"S": "f"}}},
    ]
    for condition in conditions:
        request = query.parsed_request()
        request.document = {"TableName": "orders", **condition}
        op, _, seen = chain.request(request, 1)
        chain.respond(op, 200, [], b"{}", seen, 2)
    assert f.hot_keys("orders") == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]


def test_hot_keys_stay_bounded_and_keep_the_heavy_hitters_in_order() -> None:
    sketch = SpaceSaving(capacity=10)
    for i in range(1000):
        sketch.add(f"cold{i}")
        if i % 2 == 0:
            sketch.add("hot")
        if i % 5 == 0:
            sketch.add("warm")
    top = sketch.top()
    assert len(top) == 10
    assert [k for k, _ in top[:2]] == ["hot", "warm"]
    assert top[0][1] >= 500  # space-saving counts never under-estimate
    assert top[1][1] >= 200
    assert [n for _, n in top] == sorted((n for _, n in top), reverse=True)


def test_hot_keys_of_a_filter_are_bounded_per_table() -> None:
    stats = StatsStore()
    f = DynamoStatsFilter(stats, "app", hot_keys=3)
    chain = Chain([f])
    [exchange] = exchanges("14_get_item_by_arn")  # users: a hash-only key
    request = exchange.parsed_request()
    for i in range(50):
        assert request.document is not None
        request.document["Key"] = {"pk": {"S": "hot" if i % 2 else f"u{i}"}}
        op, _, seen = chain.request(request, 1)
        chain.respond(op, 200, [], b"{}", seen, 2)
    top = f.hot_keys("users")
    assert len(top) == 3
    assert top[0][0] == "hot"
    assert top[0][1] >= 25  # an over-estimate at most, never less than the truth


def test_prometheus_exposition_has_labelled_families() -> None:
    stats = StatsStore()
    run_workload(stats)
    families = {f.name: f for f in text_string_to_metric_families(stats.prometheus().decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[
        ("meshproxy_dynamodb_operation_upstream_rq_total", (("operation", "GetItem"), ("prefix", "app")))
    ] == 3
    assert samples[("meshproxy_dynamodb_table_upstream_rq_total", (("prefix", "app"), ("table", "users")))] == 6
    assert samples[
        ("meshproxy_dynamodb_error_total",
         (("error_type", "ResourceNotFoundException"), ("prefix", "app"), ("table", "missing")))
    ] == 1
    assert samples[
        ("meshproxy_dynamodb_operation_upstream_rq_by_class_total",
         (("code_class", "4xx"), ("operation", "PutItem"), ("prefix", "app")))
    ] == 1
    assert samples[
        ("meshproxy_dynamodb_consumed_capacity_milliunits_total",
         (("operation", "BatchGetItem"), ("prefix", "app"), ("table", "users")))
    ] == 2000
    assert families["meshproxy_dynamodb_table_upstream_rq_time_ms"].type == "histogram"
    assert families["meshproxy_dynamodb_rq_active"].type == "gauge"


def test_every_label_of_a_workload_stat_is_among_the_documented_keys() -> None:
    stats = StatsStore()
    run_workload(stats)
    keys: Tally[str] = Tally()
    for family in text_string_to_metric_families(stats.prometheus().decode()):
        for sample in family.samples:
            keys.update(k for k in sample.labels if k != "le")
    assert set(keys) <= {"prefix", "operation", "table", "error_type", "code", "code_class", "partition_id"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), max_size=400), st.integers(min_value=1, max_value=8))
def test_the_hot_key_sketch_keeps_its_guarantees_on_any_stream(stream: list[int], capacity: int) -> None:
    sketch = SpaceSaving(capacity)
    for key in stream:
        sketch.add(str(key))
    truth = Tally(str(key) for key in stream)
    assert len(sketch.counts) <= capacity
    assert sum(sketch.counts.values()) == len(stream)  # space-saving conserves the total
    for key, count in truth.items():
        if count > len(stream) / capacity:
            assert sketch.counts[key] >= count  # a heavy hitter is always kept, never under-counted
    for key, estimate in sketch.counts.items():
        assert estimate >= truth[key]
