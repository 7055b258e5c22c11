"""``docs/dynamo.md`` documents every stat the DynamoDB filters produce, by flat name and Prometheus family."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from meshproxy.filters.dynamo.fault import DynamoAbort, DynamoDelay, DynamoFaultConfig, DynamoFaultFilter, DynamoMatch
from meshproxy.filters.dynamo.stats import DynamoStatsFilter
from meshproxy.stats import StatsStore

from .recorded import Chain, exchanges, workload

DOC = (Path(__file__).parents[3] / "docs" / "dynamo.md").read_text()


def every_stat() -> StatsStore:
    """A store with every kind of stat: the workload, a fault of each kind, unprocessed items and keys, and
    partition capacity."""
    stats = StatsStore()
    chain = Chain([DynamoStatsFilter(stats, "app")])
    for exchange in workload():
        chain.run(exchange)
    delay = DynamoFaultFilter(DynamoFaultConfig(delay=DynamoDelay(0.1)), stats, "app")
    abort = DynamoFaultFilter(
        DynamoFaultConfig(match=DynamoMatch(frozenset({"GetItem"})), abort=DynamoAbort()), stats, "app"
    )
    [get] = exchanges("04_get_item")
    delay.on_request(chain.request(get.parsed_request(), 1)[0])
    abort.on_request(chain.request(get.parsed_request(), 1)[0])
    [batch] = exchanges("06_batch_write")
    op, _, seen = chain.request(batch.parsed_request(), 1)
    body = json.dumps({
        "UnprocessedItems": {"orders": [{}]},
        "UnprocessedKeys": {"users": {"Keys": [{}]}},
    }).encode()
    chain.respond(op, 200, [], body, seen, 1)
    op, _, seen = chain.request(get.parsed_request(), 1)
    body = json.dumps({"ConsumedCapacity": {"TableName": "orders", "Partitions": {"p-1234567": 1}}}).encode()
    chain.respond(op, 200, [], body, seen, 1)
    return stats


def shape(name: str) -> str:
    """``dynamodb.app.table.orders.upstream_rq_total_4xx`` -> ``table.<table>.upstream_rq_total_<xx>``."""
    name = name.removeprefix("dynamodb.app.")
    name = re.sub(r"^operation\.[^.]+\.", "operation.<op>.", name)
    name = re.sub(r"^fault\.operation\.[^.]+\.", "fault.operation.<op>.", name)
    name = re.sub(r"^table\.[^.]+\.", "table.<table>.", name)
    name = re.sub(r"\.capacity\.[^.]+\.", ".capacity.<op>.", name)
    name = re.sub(r"__partition_id=.*", "__partition_id=<id>", name)
    name = re.sub(r"_\dxx$", "_<xx>", name)
    name = re.sub(r"_\d{3}$", "_<code>", name)
    if name.startswith("error.") and not name.endswith(("BatchFailureUnprocessedKeys", "BatchFailureUnprocessedItems")):
        return "error.<table>.<error_type>"
    return re.sub(r"^error\.[^.]+\.", "error.<table>.", name)


def test_every_flat_stat_name_is_documented() -> None:
    stats = every_stat()
    shapes = {shape(name) for name in stats.values()} | {
        shape(line.partition(":")[0]) for line in stats.text().splitlines()
    }
    undocumented = sorted(s for s in shapes if s not in DOC)
    assert len(shapes) > 25
    assert undocumented == []


def test_every_prometheus_family_is_documented() -> None:
    families = {f.name for f in text_string_to_metric_families(every_stat().prometheus().decode())}
    assert len(families) > 20
    assert sorted(f for f in families if f"`{f}`" not in DOC) == []
