"""The DynamoDB benchmark's backend (nginx answering like DynamoDB) and what the load can go through.

Targets follow :mod:`benchmarks.targets`: ``unavailable()`` says why one cannot run here, ``start()`` starts
it pinned to the proxy CPU and returns where the load connects. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dynamo.payloads import (
    CONTENT_TYPE,
    OPERATIONS,
    REQUEST_ID,
    crc32,
    operation,
)
from benchmarks.targets import (
    LOCALHOST,
    REPO_ROOT,
    Direct,
    MeshProxy,
    PythonForwarder,
    Running,
    Target,
    free_port,
    haproxy_binary,
    pinned,
    tail,
    wait_for_port,
)

STAT_PREFIX = "bench"
RQ_TOTAL_PATTERN = rf"^dynamodb\.{STAT_PREFIX}\.rq_total$"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def nginx_version() -> str:
    binary = nginx_binary()
    if binary is None:
        return ""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ").replace("/", " ")


def haproxy_version() -> str:
    binary = haproxy_binary()
    if binary is None:
        return ""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].split(" - ")[0].replace(" version ", " ") if out else ""


_NGINX_COMMON = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{body}
}}
"""

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
    return _NGINX_COMMON.format(dir=directory, body=body)


def nginx_proxy_config(directory: str, port: int, backend_port: int) -> str:
    body = _NGINX_PROXY.format(host=LOCALHOST, port=port, backend_port=backend_port)
    return _NGINX_COMMON.format(dir=directory, body=body)


def start_nginx(render: Callable[[str], str], port: int, cpu: int | None, prefix: str) -> Running:
    """``nginx -c <conf> -g 'daemon off;'`` (master + one worker, both on ``cpu``) once it listens."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not installed")
    workdir = tempfile.TemporaryDirectory(prefix=prefix)
    conf = Path(workdir.name) / "nginx.conf"
    conf.write_text(render(workdir.name))
    log = Path(workdir.name) / "error.log"
    cmd = [binary, "-p", workdir.name, "-c", str(conf), "-e", str(log), "-g", "daemon off;"]
    process = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu), cwd=workdir.name
    )
    running = Running(port=port, process=process, log=log, workdir=workdir)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        detail = tail(log, lines=1)
        running.stop()
        raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
    return running


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


HAPROXY_HTTP_CONFIG = """\
global
    nbthread 1
    maxconn 4096
    log stderr format short local0 emerg

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option dontlognull

frontend bench
    bind {host}:{port}
    default_backend dynamo

backend dynamo
    server nginx {host}:{backend_port}
"""


@dataclass(slots=True)
class HAProxyHttp(Target):
    """HAProxy in HTTP mode (L7), one thread, reusing upstream connections: the reference."""

    def unavailable(self) -> str | None:
        if haproxy_binary() is None:
            return "haproxy not installed (apt-get install haproxy, or --install-tools)"
        return None

    def describe_version(self) -> str:
        return haproxy_version()

    def start(self, backend_port: int, cpu: int | None) -> Running:
        binary = haproxy_binary()
        assert binary is not None
        workdir = tempfile.TemporaryDirectory(prefix="bench-dynamo-haproxy-")
        port = free_port()
        cfg = Path(workdir.name) / "haproxy.cfg"
        cfg.write_text(HAPROXY_HTTP_CONFIG.format(host=LOCALHOST, port=port, backend_port=backend_port))
        log = Path(workdir.name) / "haproxy.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)], stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu)
            )
        running = Running(port=port, process=process, log=log, workdir=workdir)
        try:
            wait_for_port(port, process)
        except RuntimeError as exc:
            detail = tail(log, lines=1)
            running.stop()
            raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
        return running


@dataclass(slots=True)
class DynamoMeshProxy(MeshProxy):
    """``python -m meshproxy sidecar dynamo ...`` exactly as a user starts it (``extra_args`` appended)."""

    module: str = "meshproxy"

    def unavailable(self) -> str | None:
        try:
            if importlib.util.find_spec("meshproxy.transport.dynamo_session") is None:
                return "meshproxy has no DynamoDB session yet"
        except ImportError as exc:
            return f"meshproxy not importable: {exc}"
        return None

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port, admin = free_port(), free_port()
        cmd = [sys.executable, "-m", self.module, "sidecar", "dynamo"]
        cmd += ["--listen", f"{LOCALHOST}:{port}", "--upstream", f"{LOCALHOST}:{backend_port}"]
        cmd += ["--admin", f"{LOCALHOST}:{admin}", "--stat-prefix", self.stat_prefix, *self.extra_args]
        workdir = tempfile.TemporaryDirectory(prefix="bench-dynamo-meshproxy-")
        log = Path(workdir.name) / "meshproxy.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu)
            )
        running = Running(port=port, process=process, admin_url=f"http://{LOCALHOST}:{admin}", log=log, workdir=workdir)
        try:
            wait_for_port(port, process)
        except RuntimeError as exc:
            detail = tail(log, lines=1)
            running.stop()
            raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
        return running


def all_targets() -> dict[str, Target]:
    """Every target, in the order the tables list them."""
    targets: list[Target] = [
        Direct("direct", "wrk straight to the nginx backend"),
        HAProxyHttp("haproxy-http", "HAProxy mode http, http-reuse always, nbthread 1"),
        NginxProxy("nginx-proxy", "nginx reverse proxy, upstream keepalive, 1 worker"),
        PythonForwarder("asyncio-forwarder", "TCP byte forwarder, asyncio Protocols on uvloop", kind="asyncio"),
        PythonForwarder("anyio-forwarder", "TCP byte forwarder, anyio streams", kind="anyio"),
        DynamoMeshProxy("meshproxy", "meshproxy sidecar dynamo, default filters (full stats)", stat_prefix=STAT_PREFIX),
        DynamoMeshProxy(
            "meshproxy-nofilters",
            "meshproxy sidecar dynamo --no-filters: HTTP framing + DynamoDB parsing, no filters",
            extra_args=["--no-filters"],
            stat_prefix=STAT_PREFIX,
            counts_operations=False,
        ),
    ]
    return {t.name: t for t in targets}
