"""The ``meshproxy`` command as a user meets it: help, ``check``, argument errors, and real runs.

The end-to-end tests start ``python -m meshproxy`` as a subprocess in front of a real SecantusDB, drive it
with real pymongo, read its admin endpoint and access log, and stop it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from support.moto import moto_server

from meshproxy.cli import _build_parser, main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLI = [sys.executable, "-m", "meshproxy"]

VALID = """\
admin: null
listeners:
  - name: app
    address: 127.0.0.1:27018
    cluster: mongo
clusters:
  - name: mongo
    hosts: ["127.0.0.1:27017"]
"""


def meshproxy(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- help ------------------------------------------------------------------------------------------------

SIDECAR_MONGO_FLAGS = [
    "--listen", "--upstream", "--admin", "--stat-prefix", "--access-log", "--topology", "--max-message-size",
    "--on-decode-error", "--idle-timeout", "--drain-timeout", "--no-filters", "--lb",
]  # fmt: skip
SIDECAR_DYNAMO_FLAGS = [
    "--listen", "--upstream", "--admin", "--stat-prefix", "--access-log", "--on-decode-error", "--idle-timeout",
    "--drain-timeout", "--no-filters", "--invalid-requests", "--upstream-timeout", "--max-body-size", "--lb",
    "--aws-region", "--aws-credentials", "--aws-host",
]  # fmt: skip
SIDECAR_GRPC_FLAGS = [
    "--listen", "--upstream", "--admin", "--stat-prefix", "--access-log", "--idle-timeout", "--drain-timeout",
    "--no-filters", "--max-concurrent-streams", "--lb",
]  # fmt: skip
TLS_FLAGS = [
    "--tls-cert", "--tls-key", "--tls-client-ca", "--upstream-tls", "--upstream-ca", "--upstream-sni",
    "--upstream-cert", "--upstream-key",
]  # fmt: skip
SIDECAR_FLAGS = {
    "mongo": SIDECAR_MONGO_FLAGS + TLS_FLAGS,
    "dynamo": SIDECAR_DYNAMO_FLAGS + TLS_FLAGS,
    "grpc": SIDECAR_GRPC_FLAGS + TLS_FLAGS,
}


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        ([], ["--version", "--log-level", "sidecar", "run", "check", "exit status"]),
        (["sidecar"], ["mongo", "dynamo", "grpc"]),
        (["sidecar", "mongo"], SIDECAR_MONGO_FLAGS),
        (["sidecar", "dynamo"], SIDECAR_DYNAMO_FLAGS),
        (["sidecar", "grpc"], SIDECAR_GRPC_FLAGS),
        (["run"], ["-c", "--config"]),
        (["check"], ["-c", "--config"]),
    ],
)
def test_help_of_every_form_lists_every_flag(
    argv: list[str], flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out, f"{flag} missing from `meshproxy {' '.join(argv)} --help`"


@pytest.mark.parametrize("protocol", sorted(SIDECAR_FLAGS))
def test_the_help_lists_exactly_the_flags_the_parser_has(protocol: str) -> None:
    """Guards SIDECAR_FLAGS (and docs/configuration.md, which is checked against the same lists)."""
    parser = _build_parser()
    sidecar = next(a for a in parser._actions if a.dest == "command").choices["sidecar"]  # type: ignore[index]
    command = next(a for a in sidecar._actions if a.dest == "protocol").choices[protocol]
    declared = {s for a in command._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    assert declared == set(SIDECAR_FLAGS[protocol])


@pytest.mark.parametrize("protocol", sorted(SIDECAR_FLAGS))
def test_the_configuration_doc_describes_every_sidecar_flag(protocol: str) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    section = doc.split(f"### `meshproxy sidecar {protocol}`", 1)[1].split("\n### ", 1)[0]
    for flag in SIDECAR_FLAGS[protocol]:
        assert f"`{flag}" in section, flag


def test_python_dash_m_prints_the_version() -> None:
    result = meshproxy("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("meshproxy ")


# -- check -----------------------------------------------------------------------------------------------


def test_check_accepts_a_valid_file_and_summarises_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(VALID)
    assert main(["check", "-c", str(path)]) == 0
    summary = "1 listener(s): app (mongo) on 127.0.0.1:27018; 1 cluster(s); admin off"
    assert capsys.readouterr().out == f"{path}: OK: {summary}\n"


@pytest.mark.parametrize("name", ["mongo-sidecar.yaml", "mongo-faults.yaml", "dynamo-sidecar.yaml"])
def test_check_accepts_the_example_files(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(EXAMPLES / name)]) == 0
    assert ": OK: 1 listener(s)" in capsys.readouterr().out


def test_check_of_a_bad_file_exits_2_naming_file_line_path_and_field_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(VALID.replace("    cluster: mongo\n", "    cluster: mongo\n    idle_timeout: forever\n"))
    result = meshproxy("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "meshproxy: configuration error:\n"
        f"{path}:6:5: listeners[0].idle_timeout: 'forever' is not a duration such as '250ms', '5s', '2m' "
        "or a number of seconds\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listeners: [\n", "not valid YAML"),
        ("", "the file is empty"),
        (VALID + "colour: blue\n", "colour: unknown field 'colour'"),
        (VALID.replace("cluster: mongo", "cluster: nope"), "listeners[0].cluster: unknown cluster 'nope'"),
    ],
)
def test_run_and_check_refuse_bad_files_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    for command in ("check", "run"):
        assert main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err
        assert expected in err
        assert "Traceback" not in err


def test_check_of_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory" in capsys.readouterr().err


# -- sidecar argument errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--listen", "nowhere", "--upstream", "127.0.0.1:27017"], "argument --listen: 'nowhere' is not an address"),
        (["--listen", "127.0.0.1:1", "--upstream", "db:port"], "argument --upstream: 'db:port': the port must be"),
        (["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--admin", "x"], "argument --admin:"),
        (["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--idle-timeout", "soon"], "--idle-timeout:"),
        (["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--max-message-size", "big"], "--max-message-size:"),
        (["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--max-message-size", "8"], "at least 16 bytes"),
        (["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2", "--topology", "weird"], "argument --topology:"),
        (["--upstream", "127.0.0.1:2"], "the following arguments are required: --listen"),
    ],
)
def test_a_bad_sidecar_argument_names_the_flag_and_exits_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sidecar", "mongo", *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_listen_equal_to_upstream_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sidecar", "mongo", "--listen", "127.0.0.1:27017", "--upstream", "127.0.0.1:27017"]) == 2
    assert "--listen and --upstream are the same address" in capsys.readouterr().err


def test_listen_equal_to_admin_is_refused_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--listen", "127.0.0.1:9901", "--upstream", "127.0.0.1:27017", "--admin", "127.0.0.1:9901"]
    assert main(["sidecar", "mongo", *argv]) == 2
    assert "--listen and --admin are the same address" in capsys.readouterr().err


def test_a_listen_port_already_in_use_exits_1_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = meshproxy(
            "sidecar", "mongo", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1", "--admin", "off"
        )
    assert result.returncode == 1
    assert "meshproxy: cannot start:" in result.stderr
    assert "address already in use" in result.stderr.lower()
    assert f"listener mongo on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_admin_port_already_in_use_exits_1_naming_the_admin_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = meshproxy(
            "sidecar", "mongo", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--admin", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert f"admin on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# -- end to end: a real process in front of a real server -------------------------------------------------


@pytest.fixture(scope="module")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    from secantus import SecantusDBServer

    with SecantusDBServer(port=0, storage_path=str(tmp_path_factory.mktemp("secantus"))) as server:
        host, port = server.address
        yield str(host), int(port)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


@contextlib.contextmanager
def running(argv: list[str], admin_port: int) -> Iterator[subprocess.Popen[str]]:
    """Start the command, wait until /ready answers 200, and always reap the process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.communicate()[1]
            with contextlib.suppress(OSError):
                if http_get(admin_port, "/ready")[0] == 200:
                    break
            assert time.monotonic() < deadline, "meshproxy did not become ready"
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def drive_and_stop(
    process: subprocess.Popen[str],
    listen_port: int,
    admin_port: int,
    prefix: str,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> dict[str, Any]:
    """Insert 5 documents one by one and read them back through the proxy; signal it; return what we saw."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        "127.0.0.1", listen_port, directConnection=True, serverSelectionTimeoutMS=5000
    )
    try:
        collection = client["shop"][f"orders_{prefix}"]
        for number in range(5):
            collection.insert_one({"n": number})
        found = sorted(doc["n"] for doc in collection.find({}, {"_id": 0}))
    finally:
        client.close()
    status, stats = http_get(admin_port, f"/stats?filter=^mongo\\.{prefix}\\.cmd\\.insert\\.total$")
    started = time.monotonic()
    process.send_signal(stop_signal)
    code = process.wait(timeout=10)
    stopped = time.monotonic() - started
    assert process.stderr is not None
    log = process.stderr.read()  # the process has exited: the pipe is at its end, this cannot block
    return {"found": found, "stats": (status, stats), "exit": code, "stop_seconds": stopped, "log": log}


@pytest.mark.integration
def test_sidecar_process_proxies_counts_logs_and_exits_0_on_sigterm(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    listen, admin = free_port(), free_port()
    access_log = tmp_path / "access.log"
    argv = [
        "sidecar", "mongo", "--listen", f"127.0.0.1:{listen}", "--upstream", f"{secantus[0]}:{secantus[1]}",
        "--admin", f"127.0.0.1:{admin}", "--stat-prefix", "cli", "--access-log", str(access_log),
        "--drain-timeout", "2s",
    ]  # fmt: skip
    with running(argv, admin) as process:
        seen = drive_and_stop(process, listen, admin, "cli")
    assert seen["found"] == [0, 1, 2, 3, 4]
    assert f"on 127.0.0.1:{listen}" in seen["log"]  # the listener address, logged on start
    assert f"127.0.0.1:{admin}" in seen["log"]
    assert seen["stats"] == (200, "mongo.cli.cmd.insert.total: 5\n")
    assert seen["exit"] == 0
    assert seen["stop_seconds"] < 5
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    inserts = [e for e in entries if e["command"] == "insert"]
    assert len(inserts) == 5
    assert {(e["db"], e["collection"]) for e in inserts} == {("shop", "orders_cli")}


@pytest.mark.integration
def test_run_with_an_equivalent_yaml_file_behaves_the_same_and_drains_on_sigint(
    secantus: tuple[str, int], tmp_path: Path
) -> None:
    listen, admin = free_port(), free_port()
    access_log = tmp_path / "access.log"
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""\
admin:
  address: 127.0.0.1:{admin}
listeners:
  - name: yaml
    address: 127.0.0.1:{listen}
    cluster: db
    filters:
      - type: stats
      - type: access_log
        path: {access_log}
      - type: topology_rewrite
clusters:
  - name: db
    hosts: ["{secantus[0]}:{secantus[1]}"]
drain_timeout: 2s
"""
    )
    with running(["run", "-c", str(config)], admin) as process:
        seen = drive_and_stop(process, listen, admin, "yaml", stop_signal=signal.SIGINT)  # Ctrl-C drains too
    assert seen["found"] == [0, 1, 2, 3, 4]
    assert f"on 127.0.0.1:{listen}" in seen["log"]
    assert f"127.0.0.1:{admin}" in seen["log"]
    assert seen["stats"] == (200, "mongo.yaml.cmd.insert.total: 5\n")
    assert seen["exit"] == 0
    assert seen["stop_seconds"] < 5
    inserts = [e for e in map(json.loads, access_log.read_text().splitlines()) if e["command"] == "insert"]
    assert len(inserts) == 5


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    with moto_server() as address:
        yield address


@pytest.mark.integration
def test_dynamo_sidecar_process_proxies_boto3_counts_per_table_and_exits_0_on_sigterm(
    moto: tuple[str, int], tmp_path: Path
) -> None:
    import boto3

    listen, admin = free_port(), free_port()
    access_log = tmp_path / "access.log"
    argv = [
        "sidecar", "dynamo", "--listen", f"127.0.0.1:{listen}", "--upstream", f"{moto[0]}:{moto[1]}",
        "--admin", f"127.0.0.1:{admin}", "--stat-prefix", "cli", "--access-log", str(access_log),
    ]  # fmt: skip
    with running(argv, admin) as process:
        client = boto3.client(
            "dynamodb", endpoint_url=f"http://127.0.0.1:{listen}", region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="x",
        )
        client.create_table(
            TableName="cli_orders", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
        )
        for number in range(5):
            client.put_item(TableName="cli_orders", Item={"pk": {"S": f"k{number}"}})
        item = client.get_item(TableName="cli_orders", Key={"pk": {"S": "k3"}})["Item"]
        stats = http_get(admin, "/stats?filter=^dynamodb\\.cli\\.table\\.cli_orders\\.upstream_rq_total$")
        hot = json.loads(http_get(admin, "/dynamodb/hot_keys?table=cli_orders")[1])
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
    assert item == {"pk": {"S": "k3"}}
    assert stats == (200, "dynamodb.cli.table.cli_orders.upstream_rq_total: 7\n")
    assert {entry["key"] for entry in hot["cli"]["cli_orders"]} == {"k0", "k1", "k2", "k3", "k4"}
    assert code == 0
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert [e["operation"] for e in entries] == ["CreateTable", *["PutItem"] * 5, "GetItem"]


@pytest.mark.integration
def test_grpc_sidecar_process_proxies_grpcio_counts_per_method_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    from testbeds.grpc.service import SERVICE, EchoClient, EchoServer

    listen, admin = free_port(), free_port()
    access_log = tmp_path / "access.log"
    with EchoServer() as server:
        argv = [
            "sidecar", "grpc", "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{server.port}",
            "--admin", f"127.0.0.1:{admin}", "--stat-prefix", "cli", "--access-log", str(access_log),
        ]  # fmt: skip
        with running(argv, admin) as process, EchoClient(("127.0.0.1", listen)) as client:
            answers = [client.unary(b"%d" % n, timeout=5) for n in range(3)]
            stats = http_get(admin, f"/stats?filter=^cluster\\.upstream\\.grpc\\.{SERVICE}\\.Unary\\.total$")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=10)
    assert answers == [b"echo:0", b"echo:1", b"echo:2"]
    assert stats == (200, f"cluster.upstream.grpc.{SERVICE}.Unary.total: 3\n")
    assert code == 0
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert [(e["method"], e["grpc_status"], e["request_messages"]) for e in entries] == [("Unary", 0, 1)] * 3


def test_sidecar_tls_flags_build_both_sides_and_refuse_half_a_pair(tmp_path: Path) -> None:
    """``--tls-cert/--tls-key`` terminate TLS on the listener; any ``--upstream-*`` TLS flag (or
    ``--upstream-tls`` alone) originates it towards the cluster. The files are checked like a config file's."""
    import trustme

    from meshproxy.cli import _build_parser, _sidecar_config
    from meshproxy.config import ConfigError

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: str(tmp_path / name) for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(files["cert.pem"])
    cert.private_key_pem.write_to_path(files["key.pem"])
    base = ["sidecar", "mongo", "--listen", "127.0.0.1:0", "--upstream", "db.internal:27017", "--admin", "off"]
    args = _build_parser().parse_args(
        [*base, "--tls-cert", files["cert.pem"], "--tls-key", files["key.pem"], "--upstream-ca", files["ca.pem"],
         "--upstream-sni", "db.internal"]
    )  # fmt: skip
    config = _sidecar_config(args)
    listener_tls, cluster_tls = config.listeners[0].tls, config.clusters[0].tls
    assert listener_tls is not None
    assert listener_tls.cert_file == files["cert.pem"]
    assert cluster_tls is not None
    assert (cluster_tls.ca_file, cluster_tls.sni, cluster_tls.verify) == (
        files["ca.pem"], "db.internal", True,
    )
    system_cas = _sidecar_config(_build_parser().parse_args([*base, "--upstream-tls"])).clusters[0].tls
    assert system_cas is not None
    assert system_cas.ca_file is None
    assert _sidecar_config(_build_parser().parse_args(base)).clusters[0].tls is None
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        _sidecar_config(_build_parser().parse_args([*base, "--tls-cert", files["cert.pem"]]))
