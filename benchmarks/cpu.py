"""Where the CPU went during one run: how busy each pinned core was, and how much of it was not ours.

A 2-core machine shared with other work is noisy: a test suite starting on the proxy's core for a second
takes that second from the proxy and shows up as a slow, spiky run. Rather than guess, each run records,
per core, the busy share (``/proc/stat``) and the *foreign* share: task time on that core minus the CPU
time of the benchmark's own processes pinned there (``/proc/<pid>/stat`` for the proxy and the backend, and
``getrusage(RUSAGE_CHILDREN)`` for the load generator, which has exited and been reaped by then). The
summary leaves runs with a large foreign share out of the median when clean runs exist, and says so.

Linux only; elsewhere every figure is ``None`` and nothing is excluded.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: A run is "contended" when processes that are not ours took more than this share of a pinned core.
CONTENDED_FOREIGN_PCT = 10.0


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Cumulative jiffies of one core: time in tasks (user, nice, system), all non-idle time, and total."""

    task: int
    busy: int
    total: int


def sample_cores() -> dict[int, CoreTimes]:
    """Per-core cumulative times from /proc/stat; empty where there is no /proc."""
    cores: dict[int, CoreTimes] = {}
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                total = user + nice + system + idle + iowait + irq + softirq + steal
                cores[int(name[3:])] = CoreTimes(user + nice + system, total - idle - iowait, total)
    except OSError:
        pass
    return cores


def process_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and of its direct children (a supervisor's workers), in jiffies."""
    total = _own_ticks(pid)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return total
    for entry in entries:
        if entry.isdigit() and int(entry) != pid and _parent(int(entry)) == pid:
            total += _own_ticks(int(entry))
    return total


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return []
    return text[text.rfind(")") + 2 :].split()  # fields after "pid (comm) ", starting with state


def _own_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if len(fields) > 12 else 0  # utime, stime


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def reaped_children_ticks() -> int:
    """CPU time of all children this process has waited for, in jiffies."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * _TICKS_PER_S)


@dataclass(frozen=True, slots=True)
class CpuWindow:
    """Busy and foreign shares (percent of wall time) of the proxy core and the load core over one run."""

    proxy_busy_pct: float | None
    load_busy_pct: float | None
    proxy_foreign_pct: float | None
    load_foreign_pct: float | None

    def contended(self, proxy_running: bool = True) -> bool:
        """Whether other processes took more than :data:`CONTENDED_FOREIGN_PCT` of a core the run used.

        Without a proxy process (``direct``) nothing of ours runs on the proxy core: only the load core counts.
        """
        shares = (self.proxy_foreign_pct, self.load_foreign_pct) if proxy_running else (self.load_foreign_pct,)
        return any(f is not None and f > CONTENDED_FOREIGN_PCT for f in shares)


class CpuAccounting:
    """Start before a run, ``finish()`` after it (once the load generator has been reaped)."""

    def __init__(
        self, proxy_cpu: int | None, load_cpu: int | None, proxy_pid: int | None, backend_pid: int | None
    ) -> None:
        self._proxy_cpu, self._load_cpu = proxy_cpu, load_cpu
        self._proxy_pid, self._backend_pid = proxy_pid, backend_pid
        self._cores = sample_cores()
        self._proxy_ticks = process_ticks(proxy_pid) if proxy_pid else 0
        self._backend_ticks = process_ticks(backend_pid) if backend_pid else 0
        self._children_ticks = reaped_children_ticks()

    def finish(self) -> CpuWindow:
        cores = sample_cores()
        proxy_ours = (process_ticks(self._proxy_pid) - self._proxy_ticks) if self._proxy_pid else 0
        load_ours = reaped_children_ticks() - self._children_ticks
        if self._backend_pid:
            load_ours += process_ticks(self._backend_pid) - self._backend_ticks
        return CpuWindow(
            proxy_busy_pct=self._busy(cores, self._proxy_cpu),
            load_busy_pct=self._busy(cores, self._load_cpu),
            proxy_foreign_pct=self._foreign(cores, self._proxy_cpu, proxy_ours),
            load_foreign_pct=self._foreign(cores, self._load_cpu, load_ours),
        )

    def _delta(self, cores: dict[int, CoreTimes], cpu: int | None) -> tuple[int, int, int] | None:
        if cpu is None or cpu not in cores or cpu not in self._cores:
            return None
        before, after = self._cores[cpu], cores[cpu]
        total = after.total - before.total
        if total <= 0:
            return None
        return after.task - before.task, after.busy - before.busy, total

    def _busy(self, cores: dict[int, CoreTimes], cpu: int | None) -> float | None:
        delta = self._delta(cores, cpu)
        return None if delta is None else round(100.0 * delta[1] / delta[2], 1)

    def _foreign(self, cores: dict[int, CoreTimes], cpu: int | None, ours: int) -> float | None:
        delta = self._delta(cores, cpu)
        return None if delta is None else round(max(0.0, 100.0 * (delta[0] - ours) / delta[2]), 1)
