"""The load side: wrk (one thread, N keep-alive connections) with a Lua script that sends one DynamoDB call.

The request is fixed per run (``wrk.method/path/headers/body``, formatted once by wrk), so wrk spends no
Lua time per request. ``done()`` prints one ``WRK_JSON {...}`` line: completed requests, the measured
duration, socket errors (connect/read/write/timeout) and ``status`` (responses with a status of 400 or
more, which is how wrk counts non-2xx), and latency percentiles from ``latency:percentile()``.

wrk takes whole seconds for ``-d``; the harness rounds up and reports the duration wrk measured.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.dynamo.payloads import Operation
from benchmarks.targets import LOCALHOST, find_tool, pinned

MARKER = "WRK_JSON "

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


def wrk_binary() -> str | None:
    return find_tool("wrk")


def wrk_version() -> str:
    binary = wrk_binary()
    if binary is None:
        return ""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0].replace("wrk debian/", "wrk ").strip() if text else ""


def _lua_string(text: str) -> str:
    """A Lua long-bracket literal that cannot be closed by ``text`` itself."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(op: Operation) -> str:
    """The wrk script for one operation: a fixed POST / with botocore's headers and body, and ``done()``."""
    lines = ['wrk.method = "POST"', 'wrk.path = "/"']
    for name, value in op.headers().items():
        lines.append(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}")
    lines.append(f"wrk.body = {_lua_string(op.body.decode())}")
    return "\n".join(lines) + "\n" + _DONE.replace('"MARKER"', _lua_string(MARKER))


def write_scripts(directory: Path, ops: list[Operation]) -> dict[str, Path]:
    scripts = {}
    for op in ops:
        path = directory / f"{op.name}.lua"
        path.write_text(lua_script(op))
        scripts[op.name] = path
    return scripts


def run_wrk(
    port: int, script: Path, connections: int, seconds: float, cpu: int | None, *, scheme: str = "http"
) -> dict[str, Any]:
    """One wrk run; returns the parsed ``done()`` JSON plus ``req_per_s`` and ``socket_errors``. ``scheme``
    ``https`` makes every connection do a TLS handshake first (wrk does not verify certificates)."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk not installed")
    whole = max(1, math.ceil(seconds - 1e-9))
    cmd = [binary, "-t1", f"-c{connections}", f"-d{whole}s", "--timeout", "5s", "-s", str(script)]
    cmd.append(f"{scheme}://{LOCALHOST}:{port}/")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=whole + 30, preexec_fn=pinned(cpu), check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            break
    else:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise RuntimeError(f"wrk failed ({done.returncode}): {detail[-1] if detail else 'no output'}")
    duration_s = result["duration_us"] / 1e6
    result["req_per_s"] = result["requests"] / duration_s if duration_s > 0 else 0.0
    result["ops_per_s"] = result["req_per_s"]  # the name benchmarks.report reads
    result["socket_errors"] = result["connect"] + result["read"] + result["write"] + result["timeout"]
    result["non_2xx"] = result["status"]
    return result
