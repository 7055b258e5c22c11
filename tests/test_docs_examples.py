"""The runnable examples in docs/ keep working (they are what users copy first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_decode_example_prints_command_database_and_collection_of_real_driver_bytes() -> None:
    out = _run("decode_bytes.py")
    assert "find db=shop collection=orders" in out
    assert "insert db=shop collection=orders" in out
    assert "'filter': {'sku': 'a'}" in out


@pytest.mark.integration
def test_in_service_example_runs_both_forms_against_an_embedded_server() -> None:
    out = _run("proxy_in_service.py")
    assert "async form: insert 1 find 1" in out
    assert "thread form: documents 11" in out
    assert "thread form: insert 1" in out
    assert "thread form: the driver talks to ('127.0.0.1'" in out


def _tally(line: str) -> dict[str, int]:
    """``"<protocol> before: 127.0.0.1:1=10 127.0.0.1:2=10"`` -> ``{"127.0.0.1:1": 10, ...}``."""
    return {name: int(count) for name, _, count in (item.rpartition("=") for item in line.split(": ", 1)[1].split())}


@pytest.mark.integration
def test_client_side_balancing_example_moves_picks_away_from_a_stopped_backend_of_each_protocol() -> None:
    out = _run("client_side_balancing.py")
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    for protocol in ("mongo", "dynamodb", "grpc"):
        before = _tally(lines[f"{protocol} before"])
        after = _tally(lines[f"{protocol} after"])
        stopped = lines[f"{protocol} stopped"].split(": ", 1)[1]
        assert len(before) == 3, before  # every host picked while all were up
        assert all(count > 0 for count in before.values())
        assert stopped in before
        assert f"{protocol} marked down: {stopped}" in out
        assert stopped not in after, after  # never picked once health checking marked it down
        assert set(after) == set(before) - {stopped}
        assert sum(after.values()) == sum(before.values())  # and every request after it succeeded
