"""Fixtures of the filter tests: a real SecantusDB per module, a raw connection to it, a stats store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from secantus import SecantusDBServer

from meshproxy.stats import StatsStore

from .wire import Wire


@pytest.fixture(scope="module")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with SecantusDBServer(port=0, storage_path=str(tmp_path_factory.mktemp("secantus"))) as server:
        yield server.address


@pytest.fixture
def wire(secantus: tuple[str, int]) -> Iterator[Wire]:
    connection = Wire(secantus)
    yield connection
    connection.close()


@pytest.fixture
def stats() -> StatsStore:
    return StatsStore()
