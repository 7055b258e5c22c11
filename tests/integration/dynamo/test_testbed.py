"""``python -m testbeds.dynamo`` is a working acceptance rig: it runs the real ``meshproxy sidecar dynamo``
command against moto, and its exit status says whether the sidecar counted what the workload issued and
drained cleanly on SIGTERM.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbeds.dynamo.__main__ import mismatches
from testbeds.dynamo.workload import Ledger

from .conftest import REPO_ROOT

pytestmark = pytest.mark.integration



def test_the_testbed_runs_the_cli_sidecar_and_exits_zero_when_every_counter_matches() -> None:
    """End to end, as a developer runs it: moto, the sidecar in its own process, the workload, the tables,
    SIGTERM; exit status 0 and the agreement line are the testbed's verdict."""
    run = subprocess.run(
        [sys.executable, "-m", "testbeds.dynamo", "--prefix", "tb"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "every operation, table and error counter equals what the workload issued" in run.stdout
    assert "sidecar drained and exited with status 0" in run.stdout
    assert "MISMATCH" not in run.stdout


def test_the_testbed_reports_a_counter_that_differs_from_the_ledger_and_one_it_did_not_expect() -> None:
    """The verdict is not vacuous: a missing count, a wrong count and an unexpected error counter are each
    reported."""
    ledger = Ledger()
    ledger.operations.update({"GetItem": 2, "PutItem": 1})
    ledger.tables.update({"orders": 3})
    stats = {
        "dynamodb.p.rq_total": "3",
        "dynamodb.p.operation.GetItem.upstream_rq_total": "2",
        "dynamodb.p.operation.PutItem.upstream_rq_total": "2",
        "dynamodb.p.table.orders.upstream_rq_total_200": "3",
        "dynamodb.p.error.orders.ThrottlingException": "1",
    }
    assert mismatches(stats, "p", ledger) == [
        "dynamodb.p.error.orders.ThrottlingException: counted 1, issued 0",
        "dynamodb.p.operation.PutItem.upstream_rq_total: counted 2, issued 1",
        "dynamodb.p.table.orders.upstream_rq_total: counted 0, issued 3",
    ]
