"""What the load generator can be pointed at: the backend itself, or a proxy in front of it.

Each target knows whether it can run here (``unavailable()`` returns the reason when not), how to start
its proxy process pinned to the proxy CPU, and where the load should connect. Processes are started with
their affinity set before ``exec`` (``os.sched_setaffinity`` in the child), so a proxy never touches the
load generator's core, not even while it starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"

#: How long a proxy may take to start listening before the run counts as failed.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for programs that cannot report the port they bound)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpu`` before it execs (Linux), or ``None``."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float = START_TIMEOUT_S) -> None:
    """Poll until ``127.0.0.1:port`` accepts a connection; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {LOCALHOST}:{port} after {timeout:.0f}s")


def read_listening_line(process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_S) -> int:
    """The port one of our helper processes bound, from its ``LISTENING <port>`` line."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if line.startswith("LISTENING "):
            return int(line.split()[1])
        if not line and process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before listening")
    raise RuntimeError("did not report a port in time")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM (a graceful drain for meshproxy), then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass(slots=True)
class Running:
    """A started target: where to send load, and what to stop afterwards."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    admin_url: str | None = None
    log: Path | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        stop_process(self.process)
        if self.workdir is not None:
            self.workdir.cleanup()

    def counter(self, pattern: str) -> tuple[int | None, str]:
        """:func:`scrape_counter` on this target's admin endpoint."""
        if self.admin_url is None:
            return None, "no admin endpoint"
        return scrape_counter(self.admin_url, pattern)

    def exited(self) -> str | None:
        """Why the process is gone, if it is (checked after each run)."""
        if self.process is None or self.process.poll() is None:
            return None
        detail = tail(self.log) if self.log else ""
        return f"exited with code {self.process.returncode}" + (f": {detail}" if detail else "")


@dataclass(slots=True)
class Target:
    """A named way to put something between the load and the backend."""

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
    """No proxy: the load generator talks to the backend itself (the ceiling of the load side)."""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        return Running(port=backend_port)


def find_tool(name: str) -> str | None:
    """A binary on PATH or in the sbin/bin directories a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def first_line(cmd: list[str]) -> str:
    """The first line a command prints (stdout, else stderr: ``nginx -v`` writes there)."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def haproxy_binary() -> str | None:
    return find_tool("haproxy")


def haproxy_version() -> str:
    """The first line of ``haproxy -v`` ("" when it is not installed)."""
    binary = haproxy_binary()
    return first_line([binary, "-v"]) if binary else ""


def nginx_binary() -> str | None:
    return find_tool("nginx")


def nginx_version() -> str:
    """``nginx/1.x.y`` ("" when it is not installed)."""
    binary = nginx_binary()
    return first_line([binary, "-v"]).replace("nginx version: ", "") if binary else ""


def meshproxy_version() -> str:
    """``meshproxy <version> (<commit>[, meshproxy/ modified in the work tree])``, "" when not importable."""
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
    where = f" ({commit}{state})" if commit else ""
    return f"meshproxy {getattr(meshproxy, '__version__', '?')}{where}"


def start_listening(
    cmd: list[str],
    port: int,
    cpu: int | None,
    workdir: tempfile.TemporaryDirectory[str],
    log: Path,
    *,
    admin_url: str | None = None,
    cwd: Path | str | None = None,
    capture_output: bool = True,
) -> Running:
    """Start ``cmd`` pinned to ``cpu`` and wait until it listens on ``port``.

    Its output goes to ``log`` (``capture_output=False`` when the program writes ``log`` itself, as nginx's
    error log). When it does not start, it is stopped, ``workdir`` removed, and the error carries the log's
    last line (a traceback's last line says what went wrong).
    """
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | int = stack.enter_context(log.open("wb")) if capture_output else subprocess.DEVNULL
        process = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu))
    running = Running(port=port, process=process, admin_url=admin_url, log=log, workdir=workdir)
    try:
        wait_for_port(port, process)
    except RuntimeError as exc:
        detail = tail(log, lines=1)
        running.stop()
        raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
    return running


#: What every HAProxy target shares: one thread, logs to stderr, the timeouts. A target's ``config`` goes on
#: from inside the ``defaults`` section (its mode first), with ``{host}``, ``{port}`` and ``{backend_port}``.
HAPROXY_COMMON = """\
global
    nbthread 1
    maxconn 4096
    log stderr format short local0 emerg

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option dontlognull
"""

HAPROXY_CONFIG = """\
    mode tcp

frontend bench
    bind {host}:{port}
    default_backend backend_canned

backend backend_canned
    server canned {host}:{backend_port}
"""


@dataclass(slots=True)
class HAProxy(Target):
    """HAProxy, one thread, pinned like every proxy: the reference. ``config`` picks the mode (TCP here; HTTP
    and h2 for the DynamoDB and gRPC benchmarks)."""

    config: str = HAPROXY_CONFIG
    install_hint: str = "run with --install-haproxy"
    workdir_prefix: str = "bench-haproxy-"

    def unavailable(self) -> str | None:
        if haproxy_binary() is None:
            return f"haproxy not installed (apt-get install haproxy, or {self.install_hint})"
        return None

    def describe_version(self) -> str:
        return haproxy_version()

    def start(self, backend_port: int, cpu: int | None) -> Running:
        binary = haproxy_binary()
        assert binary is not None
        workdir = tempfile.TemporaryDirectory(prefix=self.workdir_prefix)
        port = free_port()
        cfg = Path(workdir.name) / "haproxy.cfg"
        cfg.write_text(HAPROXY_COMMON + self.config.format(host=LOCALHOST, port=port, backend_port=backend_port))
        log = Path(workdir.name) / "haproxy.log"
        return start_listening([binary, "-db", "-f", str(cfg)], port, cpu, workdir, log)


NGINX_CONFIG = """\
worker_processes 1;
{main}pid {dir}/nginx.pid;
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


def nginx_config(directory: str, http: str, main: str = "") -> str:
    """One worker, no access log, temp files in ``directory``; ``http`` goes in the http block, ``main`` (each
    line ending in a newline) at the top level."""
    return NGINX_CONFIG.format(dir=directory, body=http, main=main)


def start_nginx(render: Callable[[str], str], port: int, cpu: int | None, prefix: str) -> Running:
    """``nginx -c <conf> -g 'daemon off;'`` once it listens on ``port``, every process on ``cpu``.

    ``render(directory)`` returns the whole configuration (see :func:`nginx_config`); a failure reports the
    last line of the error log, ``<directory>/error.log``.
    """
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not installed")
    workdir = tempfile.TemporaryDirectory(prefix=prefix)
    conf = Path(workdir.name) / "nginx.conf"
    conf.write_text(render(workdir.name))
    log = Path(workdir.name) / "error.log"
    cmd = [binary, "-p", workdir.name, "-c", str(conf), "-e", str(log), "-g", "daemon off;"]
    return start_listening(cmd, port, cpu, workdir, log, cwd=workdir.name, capture_output=False)


@dataclass(slots=True)
class PythonForwarder(Target):
    """One of the bare forwarders in ``benchmarks/forwarders.py`` (``kind``: asyncio or anyio)."""

    kind: str = "asyncio"

    def start(self, backend_port: int, cpu: int | None) -> Running:
        cmd = [sys.executable, "-m", "benchmarks.forwarders", self.kind]
        cmd += ["--listen", f"{LOCALHOST}:0", "--upstream", f"{LOCALHOST}:{backend_port}"]
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, preexec_fn=pinned(cpu))
        try:
            port = read_listening_line(process)
        except RuntimeError:
            stop_process(process)
            raise
        return Running(port=port, process=process)


@dataclass(slots=True)
class MeshProxy(Target):
    """The sidecar under test, through its CLI, exactly as a user starts it:
    ``python [python_args] -m <module> sidecar <protocol> --listen ... --upstream ... --admin ... <extra_args>``."""

    extra_args: list[str] = field(default_factory=list)
    stat_prefix: str = "bench"
    module: str = "meshproxy.cli"
    counts_operations: bool = True  # False when the flags turn the stats filter off (nothing to scrape)
    protocol: str = "mongo"
    requires: str = "meshproxy.cli"  # the module that must exist for this target to run
    python_args: list[str] = field(default_factory=list)  # e.g. ["-m", "cProfile", "-o", "out.prof"]

    def unavailable(self) -> str | None:
        try:
            spec = importlib.util.find_spec(self.requires)
        except ImportError as exc:
            return f"meshproxy not importable: {exc}"
        if spec is None:
            return f"{self.requires} does not exist yet"
        return None

    def describe_version(self) -> str:
        return meshproxy_version()

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port, admin = free_port(), free_port()
        cmd = [sys.executable, *self.python_args, "-m", self.module, "sidecar", self.protocol]
        cmd += ["--listen", f"{LOCALHOST}:{port}", "--upstream", f"{LOCALHOST}:{backend_port}"]
        cmd += ["--admin", f"{LOCALHOST}:{admin}", "--stat-prefix", self.stat_prefix, *self.extra_args]
        workdir = tempfile.TemporaryDirectory(prefix=f"bench-{self.protocol}-meshproxy-")
        log = Path(workdir.name) / "meshproxy.log"
        admin_url = f"http://{LOCALHOST}:{admin}"
        return start_listening(cmd, port, cpu, workdir, log, admin_url=admin_url, cwd=REPO_ROOT)


def scrape_stats(admin_url: str) -> tuple[dict[str, int], str | None]:
    """Every numeric counter/gauge on the admin ``/stats`` page (as integers), or ({}, why not)."""
    try:
        with urllib.request.urlopen(f"{admin_url}/stats", timeout=3) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return {}, f"admin /stats not reachable ({exc})"
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            with contextlib.suppress(ValueError):
                stats[name.strip()] = int(float(value.strip()))
    return stats, None


def sum_matching(stats: dict[str, int], pattern: str) -> int | None:
    """Sum of the stats whose names match ``pattern``; ``None`` when none does."""
    regex = re.compile(pattern)
    values = [v for k, v in stats.items() if regex.search(k)]
    return sum(values) if values else None


def scrape_counter(admin_url: str, pattern: str) -> tuple[int | None, str]:
    """Sum of the admin ``/stats`` counters whose names match ``pattern``, or ``None`` and why not."""
    stats, why = scrape_stats(admin_url)
    if why:
        return None, why
    regex = re.compile(pattern)
    names = [name for name in stats if regex.search(name)]
    if not names:
        return None, f"no stat matching {pattern!r} in /stats"
    return sum(stats[name] for name in names), ", ".join(names)


def meshproxy_targets(default: str, nofilters: str, **options: Any) -> list[Target]:
    """The sidecar with its default filters (``meshproxy``) and with ``--no-filters`` (``meshproxy-nofilters``,
    nothing counted); ``options`` are :class:`MeshProxy` fields (``protocol``, ``module``, ...)."""
    return [
        MeshProxy("meshproxy", default, **options),
        MeshProxy("meshproxy-nofilters", nofilters, extra_args=["--no-filters"], counts_operations=False, **options),
    ]


def all_targets() -> dict[str, Target]:
    """Every target the harness knows, in the order the table lists them."""
    targets: list[Target] = [
        Direct("direct", "load generator straight to the canned backend"),
        HAProxy("haproxy", "HAProxy, mode tcp, nbthread 1"),
        PythonForwarder("asyncio-forwarder", "asyncio Protocols on uvloop, pause/resume", kind="asyncio"),
        PythonForwarder("anyio-forwarder", "anyio byte streams (asyncio backend, uvloop)", kind="anyio"),
        *meshproxy_targets(
            "meshproxy sidecar mongo, default filters (stats)",
            "meshproxy sidecar mongo --no-filters: decode and forward only",
        ),
    ]
    return {t.name: t for t in targets}
