"""Small helpers shared by testbeds."""

from __future__ import annotations

import re
import socket
import time
import urllib.request


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    """Poll ``url`` until it answers 200 (the admin endpoint's /ready once the proxy is live)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become ready: {last}")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def admin_stats(admin_url: str) -> dict[str, str]:
    """The admin endpoint's ``/stats`` (``name: value`` lines) as a mapping."""
    values: dict[str, str] = {}
    for line in fetch(f"{admin_url}/stats").splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            values[name] = value
    return values


def quantile(histogram: str, name: str) -> str:
    """``P50`` of an Envoy-format histogram line (``P50(nan,0.45) P75(...)``), or ``-``."""
    match = re.search(rf"\b{name}\([^,]*,([^)]*)\)", histogram)
    return match.group(1) if match else "-"
