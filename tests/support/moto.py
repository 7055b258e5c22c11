"""moto's DynamoDB as a real HTTP server on 127.0.0.1, for any test that needs one.

moto keeps its tables in process-wide state shared by every ``ThreadedMotoServer`` of the process, so a test
that wants an empty DynamoDB resets it (``POST /moto-api/reset``, moto's own admin API, not a DynamoDB request)
before and after. moto is imported when a server starts, not when this module is imported: it is slow to
import, and test files that need it for one test only should not pay for it at collection.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer


def start_moto() -> ThreadedMotoServer:
    """A started moto server on a free port of 127.0.0.1 (the caller stops it)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # an access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


def reset_moto(address: tuple[str, int]) -> None:
    """Drop every table moto holds."""
    host, port = address
    request = urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@contextlib.contextmanager
def moto_server(*, empty: bool = False) -> Iterator[tuple[str, int]]:
    """A moto server for the ``with`` block, as its (host, port); ``empty``: no tables at the start, and none
    left behind for the rest of the suite."""
    server = start_moto()
    try:
        host, port = server.get_host_and_port()
        address = (str(host), int(port))
        if empty:
            reset_moto(address)
        yield address
        if empty:
            reset_moto(address)
    finally:
        server.stop()
