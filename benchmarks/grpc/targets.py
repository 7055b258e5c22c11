"""The gRPC targets: the backend itself, nginx ``grpc_pass``, HAProxy ``proto h2``, and the meshproxy sidecar.

Every proxy runs as one process with one worker/thread, pinned to the proxy CPU before it execs (the
helpers come from the Mongo harness, ``benchmarks.targets``), and forwards h2c to the canned backend.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.targets import (
    LOCALHOST,
    REPO_ROOT,
    Running,
    free_port,
    haproxy_binary,
    pinned,
    stop_process,
    tail,
    wait_for_port,
)


def tool(name: str) -> str | None:
    """A binary on PATH or in the sbin directories a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _first_line(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


@dataclass(slots=True)
class Target:
    name: str
    description: str

    def unavailable(self) -> str | None:
        return None

    def start(self, backend_port: int, cpu: int | None) -> Running:
        raise NotImplementedError

    def describe_version(self) -> str:
        return ""


@dataclass(slots=True)
class Direct(Target):
    """No proxy: the load talks to the canned backend (the ceiling of the load core)."""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        return Running(port=backend_port)


def _start_logged(
    cmd: list[str],
    port: int,
    workdir: tempfile.TemporaryDirectory[str],
    log: Path,
    cpu: int | None,
    admin_url: str | None = None,
    cwd: Path | None = None,
) -> Running:
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu))
    running = Running(port=port, process=process, admin_url=admin_url, log=log, workdir=workdir)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        detail = tail(log, lines=1)
        running.stop()
        raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
    return running


NGINX_CONFIG = """\
worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000000;
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
}}
"""


@dataclass(slots=True)
class Nginx(Target):
    """nginx, one worker (master_process off), h2c listener, ``grpc_pass`` with upstream keepalive."""

    def unavailable(self) -> str | None:
        binary = tool("nginx")
        if binary is None:
            return "nginx not installed (apt-get install nginx-light, or run with --install-tools)"
        configure = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stderr
        if "--without-http_grpc_module" in configure or "--without-http_v2_module" in configure:
            return "this nginx is built without the grpc or http_v2 module"
        return None

    def describe_version(self) -> str:
        binary = tool("nginx")
        return _first_line([binary, "-v"]).replace("nginx version: ", "") if binary else ""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        binary = tool("nginx")
        assert binary is not None
        workdir = tempfile.TemporaryDirectory(prefix="bench-nginx-grpc-")
        port = free_port()
        cfg = Path(workdir.name) / "nginx.conf"
        cfg.write_text(NGINX_CONFIG.format(workdir=workdir.name, host=LOCALHOST, port=port, backend_port=backend_port))
        log = Path(workdir.name) / "stdout.log"
        cmd = [binary, "-p", workdir.name, "-e", f"{workdir.name}/error.log", "-c", str(cfg)]
        return _start_logged(cmd, port, workdir, log, cpu)


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
    log stderr format short local0 emerg

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option dontlognull

frontend bench
    bind {host}:{port} proto h2
    default_backend canned

backend canned
    http-reuse always
    server canned {host}:{backend_port} proto h2
"""


@dataclass(slots=True)
class HAProxyH2(Target):
    """HAProxy, mode http, one thread, h2c on both sides (streams multiplexed on reused server connections)."""

    def unavailable(self) -> str | None:
        if haproxy_binary() is None:
            return "haproxy not installed (apt-get install haproxy, or run with --install-tools)"
        return None

    def describe_version(self) -> str:
        binary = haproxy_binary()
        return _first_line([binary, "-v"]) if binary else ""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        binary = haproxy_binary()
        assert binary is not None
        workdir = tempfile.TemporaryDirectory(prefix="bench-haproxy-h2-")
        port = free_port()
        cfg = Path(workdir.name) / "haproxy.cfg"
        cfg.write_text(HAPROXY_CONFIG.format(host=LOCALHOST, port=port, backend_port=backend_port))
        log = Path(workdir.name) / "haproxy.log"
        return _start_logged([binary, "-db", "-f", str(cfg)], port, workdir, log, cpu)


@dataclass(slots=True)
class MeshProxy(Target):
    """``python -m meshproxy sidecar grpc``, exactly as a user starts it."""

    extra_args: list[str] = field(default_factory=list)
    stat_prefix: str = "bench"
    filters: bool = True  # False with --no-filters: no per-call stats, only the cluster's stream counter
    python_args: list[str] = field(default_factory=list)  # e.g. ["-m", "cProfile", "-o", "out.prof"]

    def unavailable(self) -> str | None:
        try:
            spec = importlib.util.find_spec("meshproxy.cli")
        except ImportError as exc:
            return f"meshproxy not importable: {exc}"
        return None if spec is not None else "meshproxy.cli does not exist"

    def describe_version(self) -> str:
        try:
            import meshproxy
        except ImportError:
            return ""
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "meshproxy"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        state = ", meshproxy/ modified in the work tree" if dirty else ""
        return f"meshproxy {getattr(meshproxy, '__version__', '?')} ({commit}{state})"

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port, admin = free_port(), free_port()
        cmd = [sys.executable, *self.python_args, "-m", "meshproxy", "sidecar", "grpc"]
        cmd += ["--listen", f"{LOCALHOST}:{port}", "--upstream", f"{LOCALHOST}:{backend_port}"]
        cmd += ["--admin", f"{LOCALHOST}:{admin}", "--stat-prefix", self.stat_prefix, *self.extra_args]
        workdir = tempfile.TemporaryDirectory(prefix="bench-meshproxy-grpc-")
        log = Path(workdir.name) / "meshproxy.log"
        return _start_logged(cmd, port, workdir, log, cpu, admin_url=f"http://{LOCALHOST}:{admin}", cwd=REPO_ROOT)


def scrape_stats(admin_url: str) -> tuple[dict[str, int], str | None]:
    """Every integer counter/gauge on the admin ``/stats`` page, or ({}, why not)."""
    try:
        with urllib.request.urlopen(f"{admin_url}/stats", timeout=3) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return {}, f"admin /stats not reachable ({exc})"
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and re.fullmatch(r"-?\d+", value.strip()):
            stats[name.strip()] = int(value.strip())
    return stats, None


def sum_matching(stats: dict[str, int], pattern: str) -> int | None:
    regex = re.compile(pattern)
    values = [v for k, v in stats.items() if regex.search(k)]
    return sum(values) if values else None


def all_targets() -> dict[str, Target]:
    targets: list[Target] = [
        Direct("direct", "load straight to the canned h2c backend"),
        Nginx("nginx-grpc", "nginx grpc_pass, 1 worker, upstream keepalive"),
        HAProxyH2("haproxy-h2", "HAProxy mode http, proto h2 both sides, nbthread 1"),
        MeshProxy("meshproxy", "meshproxy sidecar grpc, default filters (stats)"),
        MeshProxy(
            "meshproxy-nofilters", "meshproxy sidecar grpc --no-filters", extra_args=["--no-filters"], filters=False
        ),
    ]
    return {t.name: t for t in targets}


def stop(running: Running) -> None:
    stop_process(running.process)
