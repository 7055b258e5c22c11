"""``python -m testbeds.replay`` with the tap (CI has no tcpdump): real pymongo/SecantusDB, boto3/moto and
grpcio traffic recorded through meshproxy taps, each capture replayed by ``meshproxy replay`` (its own
process) against a fresh backend with no difference."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshproxy.replay.decode import decode_file
from testbeds.replay.__main__ import main


@pytest.mark.integration
def test_the_replay_testbed_captures_three_protocols_through_the_tap_and_replays_them_with_no_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--capture", "tap", "--keep", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 of 3 replays matched their capture" in out
    assert out.count("0 difference(s)") == 3
    assert out.count("captured by meshproxy tap") == 3
    for name, operation, count in (
        ("mongodb", "getMore", 40), ("dynamodb", "PutItem", 20), ("grpc", "/meshproxy.test.Echo/Unary", 5),
    ):  # fmt: skip
        operations = decode_file(tmp_path / f"{name}.pcapng").operations
        assert sum(1 for op in operations if op.operation == operation) == count
