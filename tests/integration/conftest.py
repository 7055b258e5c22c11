"""Fixtures for the integration suite: real SecantusDB, the real sidecar, real pymongo.

Chain: ``pymongo -> meshproxy sidecar (ProxyThread) -> SecantusDB``; the compression tests put
``compression_stage.CompressionStage`` between the sidecar and SecantusDB.

The server is started once per module (it starts in ~0.3 s; its storage is per module so that modules
cannot see each other's data); a sidecar per test keeps stats exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from meshproxy.proxy import ProxyThread

from .support import PREFIX, client_for, sidecar_config


@pytest.fixture(scope="module")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A SecantusDB server with its own storage for this module; yields its (host, port)."""
    from secantus import SecantusDBServer

    storage = tmp_path_factory.mktemp("secantus")
    with SecantusDBServer(port=0, storage_path=str(storage)) as server:
        host, port = server.address
        yield (str(host), int(port))


@pytest.fixture
def sidecar(secantus: tuple[str, int]) -> Iterator[ProxyThread]:
    with ProxyThread(sidecar_config(secantus)) as proxy:
        yield proxy


@pytest.fixture
def client(sidecar: ProxyThread) -> Iterator[MongoClient[dict[str, Any]]]:
    mongo = client_for(sidecar.listener_address(PREFIX))
    try:
        yield mongo
    finally:
        mongo.close()
