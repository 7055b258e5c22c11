"""The DynamoDB benchmark's backend (nginx answering like DynamoDB) and what the load can go through.

Targets follow :mod:`benchmarks.targets`: ``unavailable()`` says why one cannot run here, ``start()`` starts
it pinned to the proxy CPU and returns where the load connects. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from benchmarks.dynamo.payloads import (
    CONTENT_TYPE,
    OPERATIONS,
    REQUEST_ID,
    crc32,
    operation,
)
from benchmarks.targets import (
    LOCALHOST,
    Direct,
    HAProxy,
    PythonForwarder,
    Running,
    Target,
    free_port,
    meshproxy_targets,
    nginx_binary,
    nginx_config,
    start_nginx,
)
from benchmarks.targets import haproxy_version as haproxy_first_line
from benchmarks.targets import nginx_version as nginx_first_line

STAT_PREFIX = "bench"
RQ_TOTAL_PATTERN = rf"^dynamodb\.{STAT_PREFIX}\.rq_total$"


def nginx_version() -> str:
    return nginx_first_line().replace("/", " ")


def haproxy_version() -> str:
    return haproxy_first_line().split(" - ")[0].replace(" version ", " ")


_NGINX_BACKEND = """\
    map $http_x_amz_target $dynamo_body {{
        default "";
{bodies}
    }}
    map $http_x_amz_target $dynamo_crc32 {{
        default "";
{crcs}
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            default_type {content_type};
            add_header x-amzn-RequestId {request_id} always;
            if ($dynamo_body = "") {{
                return 400 '{{"__type":"com.amazon.coral.service#UnknownOperationException"}}';
            }}
            add_header x-amz-crc32 $dynamo_crc32;
            return 200 $dynamo_body;
        }}
    }}
"""

_NGINX_PROXY = """\
    upstream dynamo {{
        server {host}:{backend_port};
        keepalive 64;
        keepalive_requests 1000000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://dynamo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def nginx_backend_config(directory: str, port: int) -> str:
    """nginx answering ``POST /`` like DynamoDB: the body and CRC chosen by ``X-Amz-Target``."""
    bodies, crcs = [], []
    for name in OPERATIONS:
        op = operation(name)
        body = op.response.decode()
        if "'" in body or "$" in body or "\\" in body:
            raise ValueError("response body cannot be quoted for nginx")
        bodies.append(f"        \"{op.target}\" '{body}';")
        crcs.append(f'        "{op.target}" "{crc32(op.response)}";')
    body = _NGINX_BACKEND.format(
        bodies="\n".join(bodies),
        crcs="\n".join(crcs),
        host=LOCALHOST,
        port=port,
        content_type=CONTENT_TYPE,
        request_id=REQUEST_ID,
    )
    return nginx_config(directory, body)


def nginx_proxy_config(directory: str, port: int, backend_port: int) -> str:
    body = _NGINX_PROXY.format(host=LOCALHOST, port=port, backend_port=backend_port)
    return nginx_config(directory, body)


def start_backend(cpu: int | None) -> Running:
    port = free_port()
    return start_nginx(lambda d: nginx_backend_config(d, port), port, cpu, "bench-dynamo-backend-")


def probe(port: int) -> None:
    """One GetItem and one PutItem on one keep-alive connection: 200, the exact body, a matching CRC."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=5)
    try:
        for name in OPERATIONS:
            op = operation(name)
            conn.request("POST", "/", body=op.body, headers=op.headers())
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"probe {op.name}: status {response.status} {body[:120]!r}")
            if body != op.response:
                raise RuntimeError(f"probe {op.name}: unexpected body {body[:120]!r}")
            crc = response.getheader("x-amz-crc32")
            if crc != str(crc32(body)):
                raise RuntimeError(f"probe {op.name}: x-amz-crc32 {crc!r}, expected {crc32(body)}")
    except (OSError, http.client.HTTPException) as exc:
        raise RuntimeError(f"probe failed: {exc!r}") from None
    finally:
        conn.close()


@dataclass(slots=True)
class NginxProxy(Target):
    """A second nginx as an L7 reverse proxy (upstream keepalive), pinned to the proxy CPU."""

    def unavailable(self) -> str | None:
        return None if nginx_binary() else "nginx not installed (apt-get install nginx-light, or --install-tools)"

    def describe_version(self) -> str:
        return nginx_version()

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port = free_port()
        render = lambda d: nginx_proxy_config(d, port, backend_port)  # noqa: E731
        return start_nginx(render, port, cpu, "bench-dynamo-nginx-proxy-")


#: Continues :data:`benchmarks.targets.HAPROXY_COMMON`'s ``defaults`` section.
HAPROXY_HTTP_CONFIG = """\
    mode http
    option http-keep-alive
    http-reuse always
    timeout http-keep-alive 60s

frontend bench
    bind {host}:{port}
    default_backend dynamo

backend dynamo
    server nginx {host}:{backend_port}
"""


def all_targets() -> dict[str, Target]:
    """Every target, in the order the tables list them."""
    targets: list[Target] = [
        Direct("direct", "wrk straight to the nginx backend"),
        HAProxy(
            "haproxy-http",
            "HAProxy mode http, http-reuse always, nbthread 1",
            config=HAPROXY_HTTP_CONFIG,
            install_hint="--install-tools",
            workdir_prefix="bench-dynamo-haproxy-",
        ),
        NginxProxy("nginx-proxy", "nginx reverse proxy, upstream keepalive, 1 worker"),
        PythonForwarder("asyncio-forwarder", "TCP byte forwarder, asyncio Protocols on uvloop", kind="asyncio"),
        PythonForwarder("anyio-forwarder", "TCP byte forwarder, anyio streams", kind="anyio"),
        # python -m meshproxy sidecar dynamo ..., exactly as a user starts it
        *meshproxy_targets(
            "meshproxy sidecar dynamo, default filters (full stats)",
            "meshproxy sidecar dynamo --no-filters: HTTP framing + DynamoDB parsing, no filters",
            module="meshproxy",
            protocol="dynamo",
            requires="meshproxy.transport.dynamo_session",
            stat_prefix=STAT_PREFIX,
        ),
    ]
    return {t.name: t for t in targets}
