"""Fault injection on the recorded boto3 requests: what is injected, when, and that botocore reads it as
DynamoDB's own error."""

from __future__ import annotations

import random

import botocore.parsers
import botocore.session

from meshproxy.codecs.dynamo import crc32_of
from meshproxy.filters.dynamo.api import Delay, LocalResponse
from meshproxy.filters.dynamo.fault import (
    DynamoAbort,
    DynamoDelay,
    DynamoFaultConfig,
    DynamoFaultFilter,
    DynamoMatch,
)
from meshproxy.filters.dynamo.stats import DynamoStatsFilter
from meshproxy.stats import StatsStore

from .recorded import Chain, exchanges, workload

GET_ITEM = exchanges("04_get_item")[0]
BATCH_GET = exchanges("07_batch_get")[0]
PUT_ITEM = exchanges("03_put_item")[0]


def fault(stats: StatsStore, config: DynamoFaultConfig, seed: int = 1) -> DynamoFaultFilter:
    return DynamoFaultFilter(config, stats, "app", random=random.Random(seed))


def botocore_parse(response: LocalResponse, operation: str) -> dict[str, object]:
    model = botocore.session.get_session().get_service_model("dynamodb").operation_model(operation)
    parsed: dict[str, object] = botocore.parsers.create_parser("json").parse(
        {"status_code": response.status, "headers": {k.decode(): v.decode() for k, v in response.headers},
         "body": response.body},
        model.output_shape,
    )
    return parsed


def test_an_abort_at_100_percent_answers_a_throttling_exception_botocore_understands() -> None:
    stats = StatsStore()
    chain = Chain([fault(stats, DynamoFaultConfig(abort=DynamoAbort("ThrottlingException", "slow down")))])
    _, action, _ = chain.request(GET_ITEM.parsed_request(), 1)
    assert isinstance(action, LocalResponse)
    assert action.status == 400
    headers = dict(action.headers)
    assert int(headers[b"x-amz-crc32"]) == crc32_of(action.body)
    parsed = botocore_parse(action, "GetItem")
    assert parsed["Error"] == {"Code": "ThrottlingException", "Message": "slow down"}
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 400  # type: ignore[index]
    v = stats.values()
    assert v["dynamodb.app.fault.abort_injected"] == 1
    assert v["dynamodb.app.fault.operation.GetItem.abort_injected"] == 1
    assert v["dynamodb.app.fault.delay_injected"] == 0


def test_an_injected_internal_server_error_has_status_500() -> None:
    stats = StatsStore()
    chain = Chain([fault(stats, DynamoFaultConfig(abort=DynamoAbort("InternalServerError", "oops")))])
    _, action, _ = chain.request(GET_ITEM.parsed_request(), 1)
    assert isinstance(action, LocalResponse)
    assert action.status == 500
    assert botocore_parse(action, "GetItem")["Error"] == {"Code": "InternalServerError", "Message": "oops"}


def test_percentage_zero_never_fires() -> None:
    stats = StatsStore()
    never = fault(
        stats,
        DynamoFaultConfig(delay=DynamoDelay(1.0, percentage=0), abort=DynamoAbort(percentage=0)),
    )
    chain = Chain([never])
    for _ in range(200):
        assert chain.request(GET_ITEM.parsed_request(), 1)[1] is None
    assert stats.values()["dynamodb.app.fault.abort_injected"] == 0
    assert stats.values()["dynamodb.app.fault.delay_injected"] == 0


def test_a_percentage_fires_for_about_that_share_with_an_injected_random() -> None:
    stats = StatsStore()
    chain = Chain([fault(stats, DynamoFaultConfig(abort=DynamoAbort(percentage=50)), seed=42)])
    fired = sum(isinstance(chain.request(GET_ITEM.parsed_request(), 1)[1], LocalResponse) for _ in range(1000))
    assert 430 < fired < 570
    assert stats.values()["dynamodb.app.fault.abort_injected"] == fired


def test_a_delay_is_returned_with_its_duration_and_counted() -> None:
    stats = StatsStore()
    chain = Chain([fault(stats, DynamoFaultConfig(delay=DynamoDelay(0.25)))])
    assert chain.request(PUT_ITEM.parsed_request(), 1)[1] == Delay(0.25)
    assert stats.values()["dynamodb.app.fault.delay_injected"] == 1
    assert stats.values()["dynamodb.app.fault.operation.PutItem.delay_injected"] == 1


def test_faults_are_matched_by_operation_and_by_table() -> None:
    stats = StatsStore()
    only_get_on_users = fault(
        stats, DynamoFaultConfig(match=DynamoMatch(frozenset({"GetItem"}), frozenset({"users"})), abort=DynamoAbort())
    )
    users_only = DynamoMatch(tables=frozenset({"users"}))
    on_users = fault(StatsStore(), DynamoFaultConfig(match=users_only, abort=DynamoAbort()))
    by_arn = exchanges("14_get_item_by_arn")[0]  # GetItem on users, named by its ARN
    assert only_get_on_users.on_request(Chain([]).request(GET_ITEM.parsed_request(), 1)[0]) is None  # orders
    assert isinstance(only_get_on_users.on_request(Chain([]).request(by_arn.parsed_request(), 1)[0]), LocalResponse)
    assert only_get_on_users.on_request(Chain([]).request(BATCH_GET.parsed_request(), 1)[0]) is None  # BatchGetItem
    # A batch that touches the table matches a table-only match.
    assert isinstance(on_users.on_request(Chain([]).request(BATCH_GET.parsed_request(), 1)[0]), LocalResponse)


def test_an_injected_abort_is_counted_by_the_stats_filter_before_it() -> None:
    stats = StatsStore()
    chain = Chain([
        DynamoStatsFilter(stats, "app"),
        fault(stats, DynamoFaultConfig(match=DynamoMatch(frozenset({"GetItem"})), abort=DynamoAbort())),
    ])
    for exchange in workload():
        chain.run(exchange)
    v = stats.values()
    assert v["dynamodb.app.fault.abort_injected"] == 3
    assert v["dynamodb.app.local_response"] == 3
    assert v["dynamodb.app.operation.GetItem.upstream_rq_total_400"] == 3
    assert v["dynamodb.app.error.orders.ThrottlingException"] == 1
    assert v["dynamodb.app.error.users.ThrottlingException"] == 1
    assert v["dynamodb.app.error.missing.ThrottlingException"] == 1
    assert "dynamodb.app.error.missing.ResourceNotFoundException" not in stats  # never reached upstream
    assert v["dynamodb.app.operation.PutItem.upstream_rq_total"] == 2
