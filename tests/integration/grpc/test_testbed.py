"""``python -m testbeds.grpc`` runs end to end: every per-method counter equals the workload, and the sidecar
exits 0 on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_the_grpc_testbed_reports_every_method_ok_and_a_clean_exit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testbeds.grpc"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISMATCH" not in result.stdout
    assert "Echo/Count" in result.stdout
    assert "sidecar drained and exited with status 0" in result.stdout
