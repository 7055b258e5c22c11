"""The gRPC targets: the backend itself, nginx ``grpc_pass``, HAProxy ``proto h2``, and the meshproxy sidecar.

Every proxy runs as one process with one worker/thread, pinned to the proxy CPU before it execs (the
helpers and the HAProxy and meshproxy targets are the Mongo harness's, ``benchmarks.targets``), and forwards
h2c to the canned backend.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from benchmarks.targets import (
    LOCALHOST,
    Direct,
    HAProxy,
    Running,
    Target,
    free_port,
    meshproxy_targets,
    nginx_binary,
    nginx_config,
    nginx_version,
    start_nginx,
)

NGINX_HTTP = """\
    http2_max_concurrent_streams 128;
    upstream canned {{
        server {host}:{backend_port};
        # nginx's grpc module carries one call per upstream connection: keep enough of them alive.
        keepalive 256;
        keepalive_requests 1000000000;
    }}
    server {{
        listen {host}:{port} http2;
        location / {{ grpc_pass grpc://canned; }}
    }}
"""


@dataclass(slots=True)
class Nginx(Target):
    """nginx, one worker (master_process off), h2c listener, ``grpc_pass`` with upstream keepalive."""

    def unavailable(self) -> str | None:
        binary = nginx_binary()
        if binary is None:
            return "nginx not installed (apt-get install nginx-light, or run with --install-tools)"
        configure = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stderr
        if "--without-http_grpc_module" in configure or "--without-http_v2_module" in configure:
            return "this nginx is built without the grpc or http_v2 module"
        return None

    def describe_version(self) -> str:
        return nginx_version()

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port = free_port()
        http = NGINX_HTTP.format(host=LOCALHOST, port=port, backend_port=backend_port)
        render = lambda directory: nginx_config(directory, http, main="master_process off;\n")  # noqa: E731
        return start_nginx(render, port, cpu, "bench-nginx-grpc-")


#: Continues :data:`benchmarks.targets.HAPROXY_COMMON`'s ``defaults`` section.
HAPROXY_H2_CONFIG = """\
    mode http

frontend bench
    bind {host}:{port} proto h2
    default_backend canned

backend canned
    http-reuse always
    server canned {host}:{backend_port} proto h2
"""


def all_targets() -> dict[str, Target]:
    targets: list[Target] = [
        Direct("direct", "load straight to the canned h2c backend"),
        Nginx("nginx-grpc", "nginx grpc_pass, 1 worker, upstream keepalive"),
        HAProxy(
            "haproxy-h2",
            "HAProxy mode http, proto h2 both sides, nbthread 1",
            config=HAPROXY_H2_CONFIG,
            install_hint="run with --install-tools",
            workdir_prefix="bench-haproxy-h2-",
        ),
        # python -m meshproxy sidecar grpc ..., exactly as a user starts it
        *meshproxy_targets(
            "meshproxy sidecar grpc, default filters (stats)",
            "meshproxy sidecar grpc --no-filters",
            module="meshproxy",
            protocol="grpc",
        ),
    ]
    return {t.name: t for t in targets}
