"""The access log: one JSON line per completed operation."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bson.int64 import Int64

from meshproxy.codecs.mongo import summarize_reply
from meshproxy.config import FaultFilterConfig
from meshproxy.filters.mongo.access_log import MongoAccessLogFilter
from meshproxy.filters.mongo.fault import MongoFaultFilter
from meshproxy.stats import StatsStore

from .wire import EXHAUST_ALLOWED, MORE_TO_COME, Chain, Wire, op_msg

FIELDS = {
    "time", "connection", "listener", "client", "upstream", "db", "collection", "command", "request_bytes",
    "reply_bytes", "replies", "duration_ms", "ok", "code", "code_name", "errmsg", "write_errors", "num_docs",
    "compressed", "local_reply",
}


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_operation_is_one_json_line_with_every_field(tmp_path: Path, wire: Wire) -> None:
    path = tmp_path / "access.log"
    log = MongoAccessLogFilter(str(path))
    chain = Chain([log])
    insert = op_msg({"insert": "people", "documents": [{"_id": 1}, {"_id": 2}]}, "crm")
    chain.exchange(wire, insert)
    chain.exchange(wire, op_msg({"find": "people", "filter": {}}, "crm"))
    log.close()
    first, second = read_lines(path)
    assert set(first) == FIELDS
    assert first["command"] == "insert"
    assert (first["db"], first["collection"]) == ("crm", "people")
    assert first["request_bytes"] == len(insert)
    assert first["reply_bytes"] > 0
    assert first["ok"] is True
    assert first["num_docs"] == 0  # documents returned: a write returns none
    assert first["code"] is None
    assert first["local_reply"] is False
    assert first["client"] == chain.connection.client
    assert first["connection"] == chain.connection.id
    assert first["time"].endswith("Z")
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).tzinfo is not None
    assert first["duration_ms"] >= 0
    assert second["command"] == "find"
    assert second["num_docs"] == 2


def test_an_error_reply_is_logged_with_its_code_and_code_name(tmp_path: Path, wire: Wire) -> None:
    path = tmp_path / "access.log"
    log = MongoAccessLogFilter(str(path))
    Chain([log]).exchange(wire, op_msg({"getMore": Int64(987654321), "collection": "gone"}, "crm"))
    log.close()
    [line] = read_lines(path)
    assert line["ok"] is False
    assert line["code"] == 43
    assert line["code_name"] == "CursorNotFound"
    assert line["errmsg"]


def test_a_fire_and_forget_write_is_logged_when_it_is_sent(tmp_path: Path, wire: Wire) -> None:
    path = tmp_path / "access.log"
    log = MongoAccessLogFilter(str(path))
    w0 = op_msg({"insert": "people", "documents": [{"x": 1}], "writeConcern": {"w": 0}}, "crm", flags=MORE_TO_COME)
    Chain([log]).exchange(wire, w0)
    log.close()
    [line] = read_lines(path)
    assert line["command"] == "insert"
    assert line["ok"] is None
    assert line["replies"] == 0
    assert line["reply_bytes"] == 0


def test_an_exhaust_stream_is_logged_once_with_the_bytes_of_every_reply(tmp_path: Path, wire: Wire) -> None:
    path = tmp_path / "access.log"
    log = MongoAccessLogFilter(str(path))
    chain = Chain([log])
    chain.exchange(wire, op_msg({"insert": "streamed", "documents": [{"_id": i} for i in range(4)]}, "crm"))
    find = chain.exchange(wire, op_msg({"find": "streamed", "batchSize": 1}, "crm"))
    assert find.response is not None
    cursor_id = summarize_reply(find.response).cursor_id
    sizes: list[int] = []
    original_reply = chain.reply

    def record(op: Any, data: Any) -> Any:
        result = original_reply(op, data)
        sizes.append(len(op.response.raw))
        return result

    chain.reply = record  # type: ignore[method-assign]
    get_more = {"getMore": Int64(cursor_id), "collection": "streamed", "batchSize": 1}
    stream = chain.exchange(wire, op_msg(get_more, "crm", flags=EXHAUST_ALLOWED))
    log.close()
    lines = read_lines(path)
    assert [line["command"] for line in lines] == ["insert", "find", "getMore"]
    assert lines[2]["replies"] == stream.replies > 1
    assert lines[2]["reply_bytes"] == sum(sizes)


def test_a_local_reply_is_flagged(tmp_path: Path, stats: StatsStore) -> None:
    path = tmp_path / "access.log"
    log = MongoAccessLogFilter(str(path))
    abort = MongoFaultFilter(FaultFilterConfig(abort={"code": 6, "code_name": "HostUnreachable"}), stats, "app",
                             random=random.Random(0))
    Chain([log, abort]).request(op_msg({"find": "people"}, "crm"))
    log.close()
    [line] = read_lines(path)
    assert line["local_reply"] is True
    assert (line["ok"], line["code"], line["code_name"]) == (False, 6, "HostUnreachable")


def test_the_file_is_appended_to_and_closed(tmp_path: Path, wire: Wire) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier": true}\n')
    log = MongoAccessLogFilter(str(path))
    Chain([log]).exchange(wire, op_msg({"ping": 1}, "admin"))
    # Line-buffered: the line is on disk before close.
    assert len(path.read_text().splitlines()) == 2
    log.close()
    log.close()  # idempotent
    assert read_lines(path)[1]["command"] == "ping"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_stdout_and_stderr_receive_the_lines(stream: str, wire: Wire, capsys: pytest.CaptureFixture[str]) -> None:
    log = MongoAccessLogFilter(stream)
    Chain([log]).exchange(wire, op_msg({"ping": 1}, "admin"))
    log.close()
    captured = capsys.readouterr()
    text = captured.out if stream == "stdout" else captured.err
    assert json.loads(text)["command"] == "ping"
