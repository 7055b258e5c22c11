"""Fixtures for the DynamoDB integration tests: a real moto server, the sidecar in front of it, boto3.

Chain: ``boto3 -> meshproxy sidecar (ProxyThread, dynamo listener) -> moto's DynamoDB (ThreadedMotoServer)``.

moto keeps its tables in process-wide state shared by every ``ThreadedMotoServer`` of the process, so each
test starts from an empty DynamoDB and leaves one behind (``POST /moto-api/reset``, sent to moto directly,
never through the sidecar, so it is not counted): tests cannot see each other's tables, nor can other
modules of the suite that run a moto server of their own. The server itself is started once per module; a
sidecar per test keeps stats exact.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.moto import moto_server, reset_moto

from meshproxy.config import dynamo_sidecar_config
from meshproxy.proxy import ProxyThread

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:  # ``testbeds`` (the workload) is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

PREFIX = "it"
"""Stat prefix, and so listener name, of every DynamoDB sidecar in this directory."""


def endpoint(address: tuple[str, int]) -> str:
    """A plain ``endpoint_url`` for boto3, as an application configures it."""
    host, port = address
    return f"http://{host}:{port}"


def create_table(dynamo: Any, name: str) -> None:
    """An on-demand table keyed by the string attribute ``id``."""
    dynamo.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def start_sidecar(upstream: tuple[str, int], filters: list[Any] | None = None) -> ProxyThread:
    """The sidecar as ``meshproxy sidecar dynamo`` runs it, on free ports of 127.0.0.1, stat prefix ``it``."""
    config = dynamo_sidecar_config(
        listen=("127.0.0.1", 0), upstream=upstream, admin=("127.0.0.1", 0), stat_prefix=PREFIX, filters=filters
    )
    proxy = ProxyThread(config)
    proxy.start()
    return proxy


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, int]]:
    """moto's DynamoDB served over HTTP on 127.0.0.1 (a free port); yields its (host, port)."""
    with moto_server() as address:
        yield address


@pytest.fixture
def empty_moto(moto: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """The module's moto server with no tables, emptied again after the test."""
    reset_moto(moto)
    yield moto
    reset_moto(moto)


@pytest.fixture
def sidecar(empty_moto: tuple[str, int]) -> Iterator[ProxyThread]:
    """A fresh sidecar with the default filters (``stats`` only) in front of an empty moto."""
    proxy = start_sidecar(empty_moto)
    try:
        yield proxy
    finally:
        proxy.stop()
