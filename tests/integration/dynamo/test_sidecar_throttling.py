"""Injected throttling through the DynamoDB sidecar, as an application with boto3's standard retries lives it.

The fault filter answers half of the ``GetItem`` requests on ``orders`` with a DynamoDB-shaped
``ThrottlingException`` without asking moto; boto3 retries them with back-off. The filter's dice cannot be
seeded from the configuration, so the tests pin down relations between counters that hold for any outcome
of the dice, not numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff

from meshproxy.proxy import ProxyThread
from testbeds.dynamo.workload import client_for

from ..support import admin_view
from .conftest import PREFIX, create_table, endpoint, start_sidecar

pytestmark = pytest.mark.integration

P = f"dynamodb.{PREFIX}"
TABLE = "orders"
GETS = 40

MAX_ATTEMPTS = 25
"""At 50 % throttling a call fails only if all its attempts are throttled: with 25 attempts that is
2^-25 per call, about one run in 800 000 for 40 calls (with boto3's usual 10 it would be one in 26)."""

THROTTLING = {
    "type": "fault",
    "match": {"operations": ["GetItem"], "tables": [TABLE]},
    "abort": {"error_type": "ThrottlingException", "percentage": 50},
}


@pytest.fixture
def throttling_sidecar(empty_moto: tuple[str, int]) -> Iterator[ProxyThread]:
    """A sidecar with ``stats`` first (so it counts injected answers as the client sees them) and the
    throttling fault after it, in front of a moto holding ``orders`` with one item (created directly on
    moto, so only the test's requests cross the sidecar)."""
    dynamo = client_for(endpoint(empty_moto))
    try:
        create_table(dynamo, TABLE)
        dynamo.put_item(TableName=TABLE, Item={"id": {"S": "o-1"}, "total": {"N": "42"}})
    finally:
        dynamo.close()
    proxy = start_sidecar(empty_moto, filters=[{"type": "stats"}, THROTTLING])
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's standard retry mode waits ``rand(0, 1) * 2**i`` seconds after the i-th throttle of a call (up
    to 20 s): a call throttled 12 times in a row, which happens in about one run in 50 at 50 %, would sleep
    for seconds. Here every wait is 1 ms; which errors are retried, and how many times, is unchanged."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.001)


@pytest.mark.usefixtures("short_backoff")
def test_injected_throttles_are_retried_by_boto3_and_counted_once_each_on_every_counter(
    throttling_sidecar: ProxyThread,
) -> None:
    """40 ``GetItem`` calls all succeed from the application's view, although some attempts were throttled.
    Every throttle the sidecar injected is visible exactly once everywhere: in ``fault.abort_injected``, in
    ``local_response``, in ``error.orders.ThrottlingException``, as one extra ``GetItem`` in
    ``operation.GetItem.upstream_rq_total`` (which counts what the client received, injected or not), as a
    400, and as one retry in boto3's own ``ResponseMetadata.RetryAttempts``."""
    retrying = Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS})
    dynamo = client_for(endpoint(throttling_sidecar.listener_address(PREFIX)), retrying)
    retries = 0
    try:
        for _ in range(GETS):
            response = dynamo.get_item(TableName=TABLE, Key={"id": {"S": "o-1"}})
            assert response["Item"] == {"id": {"S": "o-1"}, "total": {"N": "42"}}
            retries += response["ResponseMetadata"]["RetryAttempts"]
    finally:
        dynamo.close()

    stats = admin_view(throttling_sidecar).stats
    injected = stats[f"{P}.fault.abort_injected"]
    assert injected > 0
    assert retries == injected
    assert stats[f"{P}.fault.operation.GetItem.abort_injected"] == injected
    assert stats[f"{P}.local_response"] == injected
    assert stats[f"{P}.error.{TABLE}.ThrottlingException"] == injected
    assert stats[f"{P}.operation.GetItem.upstream_rq_total"] == GETS + injected
    assert stats[f"{P}.operation.GetItem.upstream_rq_total_200"] == GETS
    assert stats[f"{P}.operation.GetItem.upstream_rq_total_400"] == injected
    assert stats[f"{P}.table.{TABLE}.upstream_rq_total"] == GETS + injected
    assert stats[f"{P}.rq_total"] == GETS + injected
    assert stats[f"{P}.rq_active"] == 0


def test_requests_the_fault_does_not_match_are_never_throttled(throttling_sidecar: ProxyThread) -> None:
    """The fault matches ``GetItem`` on ``orders`` only: ``PutItem`` on ``orders`` and a ``Query`` pass
    untouched, with retries off, so a single injected throttle would fail the call."""
    dynamo = client_for(endpoint(throttling_sidecar.listener_address(PREFIX)))
    try:
        for n in range(10):
            dynamo.put_item(TableName=TABLE, Item={"id": {"S": f"p-{n}"}})
            dynamo.query(
                TableName=TABLE,
                KeyConditionExpression="id = :id",
                ExpressionAttributeValues={":id": {"S": f"p-{n}"}},
            )
    finally:
        dynamo.close()

    stats = admin_view(throttling_sidecar).stats
    assert stats.get(f"{P}.fault.abort_injected", 0) == 0
    assert stats[f"{P}.operation.PutItem.upstream_rq_total_200"] == 10
    assert stats[f"{P}.operation.Query.upstream_rq_total_200"] == 10
    assert f"{P}.error.{TABLE}.ThrottlingException" not in stats
