"""Run meshproxy inside a service: an in-process sidecar in front of a MongoDB server, then read its stats.

Run: python docs/examples/proxy_in_service.py [UPSTREAM_HOST:PORT]
Without an argument it starts an embedded SecantusDB (installed with meshproxy's test extra).
"""

from __future__ import annotations

import sys
import tempfile

import anyio
import pymongo

from meshproxy.config import mongo_sidecar_config
from meshproxy.proxy import Proxy, ProxyThread


async def async_form(upstream: tuple[str, int]) -> None:
    """In async code the proxy shares your event loop (anyio on asyncio)."""
    config = mongo_sidecar_config(listen=("127.0.0.1", 0), upstream=upstream, admin=None, stat_prefix="svc")
    async with Proxy(config) as proxy:
        host, port = proxy.listener_address("svc")

        def use_blocking_driver() -> None:
            with pymongo.MongoClient(f"mongodb://{host}:{port}", serverSelectionTimeoutMS=5000) as client:
                client.app.events.insert_one({"kind": "signup"})
                client.app.events.find_one({"kind": "signup"})

        # pymongo blocks, so it runs in a worker thread while the proxy serves on this loop.
        await anyio.to_thread.run_sync(use_blocking_driver)
        stats = proxy.stats.values()
        print("async form: insert", stats["mongo.svc.cmd.insert.total"], "find", stats["mongo.svc.cmd.find.total"])


def thread_form(upstream: tuple[str, int]) -> None:
    """From synchronous code the proxy runs on its own event loop in a background thread."""
    config = mongo_sidecar_config(listen=("127.0.0.1", 0), upstream=upstream, admin=None, stat_prefix="svc2")
    with ProxyThread(config) as proxy:
        host, port = proxy.listener_address("svc2")
        with pymongo.MongoClient(f"mongodb://{host}:{port}", serverSelectionTimeoutMS=5000) as client:
            client.app.events.insert_many([{"n": i} for i in range(10)])
            print("thread form: documents", client.app.events.count_documents({}))
            print("thread form: the driver talks to", client.address)
        print("thread form: insert", proxy.stats.values()["mongo.svc2.cmd.insert.total"])


def main() -> None:
    if len(sys.argv) > 1:
        host, _, port = sys.argv[1].rpartition(":")
        upstream = (host, int(port))
        anyio.run(async_form, upstream)
        thread_form(upstream)
        return
    from secantus import SecantusDBServer

    with tempfile.TemporaryDirectory() as storage, SecantusDBServer(port=0, storage_path=storage) as server:
        anyio.run(async_form, server.address)
        thread_form(server.address)


if __name__ == "__main__":
    main()
