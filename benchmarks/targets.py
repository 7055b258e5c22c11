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


def haproxy_binary() -> str | None:
    """``haproxy`` on PATH or in the sbin directories a non-root PATH often lacks."""
    found = shutil.which("haproxy")
    if found:
        return found
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
    log stderr format short local0 emerg

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option dontlognull

frontend bench
    bind {host}:{port}
    default_backend backend_canned

backend backend_canned
    server canned {host}:{backend_port}
"""


@dataclass(slots=True)
class HAProxy(Target):
    """HAProxy in TCP mode, one thread, pinned like every proxy: the reference for a fast L4 proxy."""

    def unavailable(self) -> str | None:
        if haproxy_binary() is None:
            return "haproxy not installed (apt-get install haproxy, or run with --install-haproxy)"
        return None

    def describe_version(self) -> str:
        binary = haproxy_binary()
        if binary is None:
            return ""
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0] if out else ""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        binary = haproxy_binary()
        assert binary is not None
        workdir = tempfile.TemporaryDirectory(prefix="bench-haproxy-")
        port = free_port()
        cfg = Path(workdir.name) / "haproxy.cfg"
        cfg.write_text(HAPROXY_CONFIG.format(host=LOCALHOST, port=port, backend_port=backend_port))
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
    """The sidecar under test, through its CLI, exactly as a user starts it."""

    extra_args: list[str] = field(default_factory=list)
    stat_prefix: str = "bench"
    module: str = "meshproxy.cli"  # ``python -m <module> sidecar mongo ...``
    counts_operations: bool = True  # False when the flags turn the stats filter off (nothing to scrape)

    def unavailable(self) -> str | None:
        try:
            spec = importlib.util.find_spec(self.module)
        except ImportError as exc:
            return f"meshproxy not importable: {exc}"
        if spec is None:
            return f"{self.module} does not exist yet"
        return None

    def describe_version(self) -> str:
        try:
            import meshproxy

            return f"meshproxy {getattr(meshproxy, '__version__', '?')}"
        except ImportError:
            return ""

    def start(self, backend_port: int, cpu: int | None) -> Running:
        port, admin = free_port(), free_port()
        cmd = [sys.executable, "-m", self.module, "sidecar", "mongo"]
        cmd += ["--listen", f"{LOCALHOST}:{port}", "--upstream", f"{LOCALHOST}:{backend_port}"]
        cmd += ["--admin", f"{LOCALHOST}:{admin}", "--stat-prefix", self.stat_prefix, *self.extra_args]
        workdir = tempfile.TemporaryDirectory(prefix="bench-meshproxy-")
        log = Path(workdir.name) / "meshproxy.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu)
            )
        running = Running(port=port, process=process, admin_url=f"http://{LOCALHOST}:{admin}", log=log, workdir=workdir)
        try:
            wait_for_port(port, process)
        except RuntimeError as exc:
            detail = tail(log, lines=1)  # a traceback's last line says what went wrong
            running.stop()
            raise RuntimeError(f"{exc}{': ' + detail if detail else ''}") from None
        return running


def scrape_counter(admin_url: str, pattern: str) -> tuple[int | None, str]:
    """Sum of the admin ``/stats`` counters whose names match ``pattern``, or ``None`` and why not."""
    try:
        with urllib.request.urlopen(f"{admin_url}/stats", timeout=3) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return None, f"admin /stats not reachable ({exc})"
    regex = re.compile(pattern)
    total, names = 0, []
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and regex.search(name.strip()):
            with contextlib.suppress(ValueError):
                total += int(float(value.strip()))
                names.append(name.strip())
    if not names:
        return None, f"no stat matching {pattern!r} in /stats"
    return total, ", ".join(names)


def all_targets() -> dict[str, Target]:
    """Every target the harness knows, in the order the table lists them."""
    targets: list[Target] = [
        Direct("direct", "load generator straight to the canned backend"),
        HAProxy("haproxy", "HAProxy, mode tcp, nbthread 1"),
        PythonForwarder("asyncio-forwarder", "asyncio Protocols on uvloop, pause/resume", kind="asyncio"),
        PythonForwarder("anyio-forwarder", "anyio byte streams (asyncio backend, uvloop)", kind="anyio"),
        MeshProxy("meshproxy", "meshproxy sidecar mongo, default filters (stats)"),
        MeshProxy(
            "meshproxy-nofilters",
            "meshproxy sidecar mongo --no-filters: decode and forward only",
            extra_args=["--no-filters"],
            counts_operations=False,
        ),
    ]
    return {t.name: t for t in targets}
