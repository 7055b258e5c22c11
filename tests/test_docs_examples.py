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
