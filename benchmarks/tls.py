"""The cost of TLS termination, next to HAProxy on the same certificate: ``python -m benchmarks.tls``.

Two measurements, each target terminating TLS with one trustme certificate (ECDSA P-256) in front of the
DynamoDB benchmark's nginx backend, the proxy pinned to one CPU and the load (and backend) to the other:

- **handshakes/s**: ``openssl s_time -new`` opens TLS connections one after another for ``--duration``
  seconds (a full handshake each, no resumption) against HAProxy (``bind ... ssl``) and a meshproxy TCP
  listener with ``tls``;
- **keep-alive throughput**: wrk's botocore-shaped GetItem on 32 kept-alive connections, over plain HTTP and
  over HTTPS, through HAProxy (``mode http``) and meshproxy's DynamoDB listener. The TLS cost is the drop in
  requests/s from plain to HTTPS for the same proxy.

Targets run in turn, ``--rounds`` times, and the median is reported. The machine is shared and small (2
cores): compare the columns of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trustme

from benchmarks.dynamo.payloads import operation
from benchmarks.dynamo.targets import HAPROXY_HTTP_CONFIG, probe, start_backend
from benchmarks.dynamo.wrk import run_wrk, write_scripts
from benchmarks.harness import cpu_placement
from benchmarks.targets import (
    HAPROXY_COMMON,
    LOCALHOST,
    REPO_ROOT,
    Running,
    free_port,
    haproxy_binary,
    pinned,
    start_listening,
)

HAPROXY_TLS_TCP = """\
    mode tcp

frontend bench
    bind {host}:{port} ssl crt {pem}
    default_backend nginx

backend nginx
    server nginx {host}:{backend_port}
"""


HAPROXY_HTTPS_CONFIG = HAPROXY_HTTP_CONFIG.replace("bind {host}:{port}", "bind {host}:{port} ssl crt {pem}")


@dataclass(slots=True)
class Pki:
    directory: Path
    cert: Path
    key: Path
    pem: Path
    """Key and chain in one file, as HAProxy wants them."""


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert(LOCALHOST, "localhost")
    pki = Pki(directory, directory / "server.crt", directory / "server.key", directory / "server.pem")
    issued.cert_chain_pems[0].write_to_path(str(pki.cert))
    for blob in issued.cert_chain_pems[1:]:
        blob.write_to_path(str(pki.cert), append=True)
    issued.private_key_pem.write_to_path(str(pki.key))
    issued.private_key_and_cert_chain_pem.write_to_path(str(pki.pem))
    return pki


def start_haproxy(config: str, backend_port: int, cpu: int | None, pki: Pki) -> Running:
    binary = haproxy_binary()
    assert binary is not None
    workdir = tempfile.TemporaryDirectory(prefix="bench-tls-haproxy-")
    port = free_port()
    cfg = Path(workdir.name) / "haproxy.cfg"
    text = config.replace(" ssl crt {pem}", f" ssl crt {pki.pem}") if "{pem}" in config else config
    cfg.write_text(HAPROXY_COMMON + text.format(host=LOCALHOST, port=port, backend_port=backend_port))
    return start_listening([binary, "-db", "-f", str(cfg)], port, cpu, workdir, Path(workdir.name) / "haproxy.log")


def start_meshproxy(protocol: str, tls: bool, backend_port: int, cpu: int | None, pki: Pki) -> Running:
    workdir = tempfile.TemporaryDirectory(prefix="bench-tls-meshproxy-")
    port = free_port()
    listener = f"{{name: bench, address: '{LOCALHOST}:{port}', protocol: {protocol}, cluster: backend"
    if tls:
        listener += f", tls: {{cert_file: '{pki.cert}', key_file: '{pki.key}', reload_interval: 0}}"
    listener += "}"
    cfg = Path(workdir.name) / "mesh.yaml"
    cfg.write_text(
        f"admin: null\nlisteners: [{listener}]\n"
        f"clusters: [{{name: backend, hosts: ['{LOCALHOST}:{backend_port}']}}]\n"
    )
    cmd = [sys.executable, "-m", "meshproxy", "--log-level", "warning", "run", "-c", str(cfg)]
    return start_listening(cmd, port, cpu, workdir, Path(workdir.name) / "meshproxy.log", cwd=REPO_ROOT)


def handshakes_per_second(port: int, seconds: int, cpu: int | None) -> float:
    """``openssl s_time -new``: full handshakes, one connection at a time, for ``seconds``."""
    done = subprocess.run(
        ["openssl", "s_time", "-connect", f"{LOCALHOST}:{port}", "-new", "-time", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pinned(cpu), check=False,
    )  # fmt: skip
    found = re.search(r"(\d+) connections in ([\d.]+) real seconds", done.stdout)
    if found is None:
        raise RuntimeError(f"openssl s_time: {done.stdout.strip()[-200:] or done.stderr.strip()[-200:]}")
    return int(found.group(1)) / float(found.group(2))


@dataclass(slots=True)
class Row:
    name: str
    handshakes: list[float]
    plain: list[float]
    tls: list[float]
    p99_plain: list[float]
    p99_tls: list[float]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each target in turn (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's kept-alive connections (default 32)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--proxy-cpu", type=int)
    parser.add_argument("--load-cpu", type=int)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 2, 1
    if haproxy_binary() is None:
        print("haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
        return 2
    proxy_cpu, load_cpu, placement = cpu_placement(args)
    print(f"TLS benchmark: {placement}; {args.rounds} round(s) of {args.duration} s; wrk -c{args.connections}")
    starters: dict[str, tuple[Callable[[int], Running], Callable[[int], Running], Callable[[int], Running]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as scratch:
        pki = make_pki(Path(scratch))
        script = write_scripts(Path(scratch), [operation("getitem")])["getitem"]
        backend = start_backend(load_cpu)
        try:
            probe(backend.port)
            starters = {
                "haproxy": (
                    lambda b: start_haproxy(HAPROXY_TLS_TCP, b, proxy_cpu, pki),
                    lambda b: start_haproxy(HAPROXY_HTTP_CONFIG, b, proxy_cpu, pki),
                    lambda b: start_haproxy(HAPROXY_HTTPS_CONFIG, b, proxy_cpu, pki),
                ),
                "meshproxy": (
                    lambda b: start_meshproxy("tcp", True, b, proxy_cpu, pki),
                    lambda b: start_meshproxy("dynamo", False, b, proxy_cpu, pki),
                    lambda b: start_meshproxy("dynamo", True, b, proxy_cpu, pki),
                ),
            }
            rows = {name: Row(name, [], [], [], [], []) for name in starters}
            for round_number in range(args.rounds):
                for name, (handshake_target, plain_target, tls_target) in starters.items():
                    row = rows[name]
                    running = handshake_target(backend.port)
                    try:
                        row.handshakes.append(handshakes_per_second(running.port, args.duration, load_cpu))
                    finally:
                        running.stop()
                    for scheme, start, values, p99s in (
                        ("http", plain_target, row.plain, row.p99_plain),
                        ("https", tls_target, row.tls, row.p99_tls),
                    ):
                        running = start(backend.port)
                        try:
                            result = run_wrk(
                                running.port, script, args.connections, args.duration, load_cpu, scheme=scheme
                            )
                        finally:
                            running.stop()
                        if result["socket_errors"] or result["non_2xx"]:
                            errors, statuses = result["socket_errors"], result["non_2xx"]
                            raise RuntimeError(f"{name} {scheme}: {errors} socket errors, {statuses} non-2xx answers")
                        values.append(result["req_per_s"])
                        p99s.append(result["p99_us"] / 1000)
                    print(f"  round {round_number + 1}: {name}: {row.handshakes[-1]:.0f} handshakes/s, "
                          f"{row.plain[-1]:.0f} req/s plain, {row.tls[-1]:.0f} req/s TLS", flush=True)  # fmt: skip
        finally:
            backend.stop()
    median = statistics.median
    print(f"\n{'target':10} {'handshakes/s':>12} {'plain req/s':>12} {'TLS req/s':>10} {'TLS cost':>9} "
          f"{'p99 plain ms':>12} {'p99 TLS ms':>10}")  # fmt: skip
    for row in rows.values():
        plain, tls = median(row.plain), median(row.tls)
        print(f"{row.name:10} {median(row.handshakes):>12.0f} {plain:>12.0f} {tls:>10.0f} {1 - tls / plain:>9.1%} "
              f"{median(row.p99_plain):>12.2f} {median(row.p99_tls):>10.2f}")  # fmt: skip
    mesh, haproxy = rows["meshproxy"], rows["haproxy"]
    print(f"\nmeshproxy vs HAProxy: handshakes {median(mesh.handshakes) / median(haproxy.handshakes):.0%}, "
          f"TLS keep-alive throughput {median(mesh.tls) / median(haproxy.tls):.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
