"""The testbed's boto3 workload through the DynamoDB sidecar: the proxy changes no answer, and its counters equal
what the workload issued, in ``/stats`` and in ``/stats/prometheus``.

The workload (``testbeds.dynamo.workload``) touches every data-plane operation a DynamoDB application uses —
table creation and description, single-item reads and writes, Query, a paginated Scan, batches and
transactions over two tables, PartiQL — and two errors, with boto3's retries off so that each call is one
request and the expected counts are exact.
"""

from __future__ import annotations

import pytest
from support.moto import reset_moto

from meshproxy.proxy import ProxyThread
from testbeds.dynamo.workload import CUSTOMERS, MISSING, ORDERS, Ledger, run_workload

from ..support import admin_view
from .conftest import PREFIX, endpoint

pytestmark = pytest.mark.integration

P = f"dynamodb.{PREFIX}"


def _through(sidecar: ProxyThread) -> Ledger:
    return run_workload(endpoint(sidecar.listener_address(PREFIX)))


def test_every_call_returns_through_the_sidecar_what_it_returns_from_moto_directly(
    empty_moto: tuple[str, int], sidecar: ProxyThread
) -> None:
    """The proxy is invisible to the client: the same workload against an empty moto, once with
    ``endpoint_url`` at moto and once at the sidecar, gets the same answer to every call (items, pages,
    batch and transaction responses, consumed capacity, error codes), request ids and timestamps aside."""
    direct = run_workload(endpoint(empty_moto))
    reset_moto(empty_moto)
    proxied = _through(sidecar)

    assert [step for step, _ in proxied.results] == [step for step, _ in direct.results]
    for (step, through_proxy), (_, from_moto) in zip(proxied.results, direct.results, strict=True):
        assert through_proxy == from_moto, step
    assert proxied.operations == direct.operations
    assert proxied.errors == direct.errors


def test_operation_table_and_error_counters_equal_what_the_workload_issued(sidecar: ProxyThread) -> None:
    """``operation.<op>.upstream_rq_total``, ``table.<table>.upstream_rq_total`` and
    ``error.<table>.<type>`` read exactly the workload's ledger, and no other operation, table or error
    appears: batches and transactions count once for each table they touch, PartiQL counts under the table
    of its statement, and each error is booked under the table of the request that got it."""
    ledger = _through(sidecar)
    view = admin_view(sidecar)
    stats = view.stats

    operations = {
        name.removeprefix(f"{P}.operation.").removesuffix(".upstream_rq_total"): value
        for name, value in stats.items()
        if name.startswith(f"{P}.operation.") and name.endswith(".upstream_rq_total")
    }
    assert operations == dict(ledger.operations)
    tables = {
        name.removeprefix(f"{P}.table.").removesuffix(".upstream_rq_total"): value
        for name, value in stats.items()
        if name.startswith(f"{P}.table.") and name.endswith(".upstream_rq_total")
    }
    assert tables == dict(ledger.tables)
    assert set(tables) == {ORDERS, CUSTOMERS, MISSING}
    errors = {
        tuple(name.removeprefix(f"{P}.error.").split(".", 1)): value
        for name, value in stats.items()
        if name.startswith(f"{P}.error.")
    }
    assert errors == dict(ledger.errors)
    assert errors == {(MISSING, "ResourceNotFoundException"): 1, (ORDERS, "ConditionalCheckFailedException"): 1}

    # Listener-wide: every request was seen and answered; the four batches and transactions named two tables.
    assert stats[f"{P}.rq_total"] == ledger.requests
    assert stats[f"{P}.rq_active"] == 0
    assert stats[f"{P}.multiple_tables"] == 4
    assert stats[f"{P}.local_response"] == 0
    # The two errors are 400s; everything else a 200.
    assert stats[f"{P}.operation.GetItem.upstream_rq_total_400"] == 1
    assert stats[f"{P}.operation.PutItem.upstream_rq_total_400"] == 1
    assert stats[f"{P}.operation.PutItem.upstream_rq_total_2xx"] == ledger.operations["PutItem"] - 1
    assert stats[f"{P}.operation.Scan.upstream_rq_total_200"] == ledger.operations["Scan"] > 1


def test_prometheus_labels_carry_the_same_counts_as_stats_names(sidecar: ProxyThread) -> None:
    """In ``/stats/prometheus`` operation, table and error type are labels of one family each
    (``meshproxy_dynamodb_operation_upstream_rq_total``, ``…_table_upstream_rq_total``,
    ``meshproxy_dynamodb_error_total``), with the same values as the flat names of ``/stats``."""
    ledger = _through(sidecar)
    view = admin_view(sidecar)

    family = "meshproxy_dynamodb_operation_upstream_rq_total"
    for operation, issued in ledger.operations.items():
        assert view.sample_sum(family, prefix=PREFIX, operation=operation) == issued, operation
    assert view.sample_sum(family, prefix=PREFIX) == ledger.requests
    for table, issued in ledger.tables.items():
        assert view.sample_sum("meshproxy_dynamodb_table_upstream_rq_total", prefix=PREFIX, table=table) == issued
    for (table, error_type), issued in ledger.errors.items():
        labels = {"prefix": PREFIX, "table": table, "error_type": error_type}
        assert view.sample_sum("meshproxy_dynamodb_error_total", **labels) == issued
    # Every response was timed: the latency histogram of each operation has one observation per request.
    for operation, issued in ledger.operations.items():
        count = view.sample_sum("meshproxy_dynamodb_operation_upstream_rq_time_ms_count", operation=operation)
        assert count == issued, operation
