"""The DynamoDB access log: one JSON line per request, on the recorded boto3 exchanges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshproxy.filters.dynamo.access_log import DynamoAccessLogFilter
from meshproxy.filters.dynamo.fault import DynamoAbort, DynamoFaultConfig, DynamoFaultFilter
from meshproxy.stats import StatsStore

from .recorded import Chain, exchanges, workload


def test_every_request_of_the_workload_gets_one_line_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = DynamoAccessLogFilter(str(path))
    chain = Chain([log], latency_ms=2.5)
    for exchange in workload():
        chain.run(exchange)
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 19
    assert set(lines[0]) == {
        "time", "connection", "listener", "client", "upstream", "operation", "tables", "status", "error_type",
        "request_bytes", "response_bytes", "duration_ms", "consumed_capacity", "unprocessed", "local_response",
    }
    put = lines[3]
    assert put["operation"] == "PutItem"
    assert put["tables"] == ["orders"]
    assert put["status"] == 200
    assert put["error_type"] is None
    assert put["consumed_capacity"] == {"orders": 1.0}
    assert put["duration_ms"] == 2.5
    assert put["connection"] == 7
    assert put["client"] == "127.0.0.1:50000"
    assert put["local_response"] is False
    assert put["request_bytes"] == exchanges("03_put_item")[0].request.size
    assert put["time"].endswith("Z")
    batch = next(line for line in lines if line["operation"] == "BatchGetItem")
    assert batch["tables"] == ["orders", "users"]
    assert batch["consumed_capacity"] == {"orders": 1.0, "users": 2.0}
    missing = next(line for line in lines if line["error_type"] == "ResourceNotFoundException")
    assert (missing["status"], missing["tables"]) == (400, ["missing"])


def test_an_injected_fault_is_logged_as_a_local_response(capsys: pytest.CaptureFixture[str]) -> None:
    abort = DynamoFaultFilter(DynamoFaultConfig(abort=DynamoAbort()), StatsStore(), "app")
    chain = Chain([DynamoAccessLogFilter(), abort])
    chain.run(exchanges("04_get_item")[0])
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["local_response"] is True
    assert record["error_type"] == "ThrottlingException"
    assert record["status"] == 400
