"""How much CPU did everything else use while a benchmark timed something?

Other CPU use = the whole machine's busy CPU time (/proc/stat) minus this process tree's
(this process and the children it reaped, from ``os.times()``, plus live descendants from
/proc/<pid>/stat). Measured at the edges of each timed section, so it catches processes that
start and end between two looks -- per-process sampling misses those, because a process's
CPU time vanishes from /proc when it exits (it moves into its parent's counters).

>>> monitor = LoadMonitor()
>>> with monitor.timed("latency"):
...     run_the_benchmark()
>>> monitor.summary()   # {"other_cpu_seconds": ..., "share": ..., "fit_for_record": ...}

A run is fit for the record when other processes used at most ``MAX_OTHER_SHARE`` of the
machine's CPU capacity (elapsed seconds x logical CPUs) during the timed sections (a script may
set its own share). :func:`other_busy_processes` names the processes behind a load: a sample
of every process's CPU time over a short interval.
"""

import contextlib
import os
import time
from pathlib import Path

from retinamask.core.cpu import logical_cpus

MAX_OTHER_SHARE = 0.05  # 5 % of the machine: e.g. 0.1 CPU of 2 for the whole timed time
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds():
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal;
    not idle or iowait), or None where /proc/stat cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _proc_stat(pid):
    """(parent pid, utime + stime + cutime + cstime in seconds) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICKS


def _live_processes():
    """pid -> (parent pid, CPU seconds) of every readable process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def own_tree(parents):
    """This process's pid and its live descendants (pool workers, forkserver), from pid -> parent pid."""
    tree, changed = {os.getpid()}, True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return tree


def own_tree_seconds():
    """CPU seconds of this process, the children it reaped and its live descendants."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    live = _live_processes()
    tree = own_tree({pid: parent for pid, (parent, _) in live.items()})
    return total + sum(live[pid][1] for pid in tree if pid != os.getpid())


class LoadMonitor:
    """Accumulates other processes' CPU seconds over the timed sections of a benchmark."""

    def __init__(self, max_other_share=MAX_OTHER_SHARE):
        self.max_other_share = max_other_share
        self.sections = {}

    @contextlib.contextmanager
    def timed(self, label):
        machine, own, started = machine_busy_seconds(), own_tree_seconds(), time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            if machine is not None:
                other = max(0.0, (machine_busy_seconds() - machine) - (own_tree_seconds() - own))
                entry = self.sections.setdefault(label, {"elapsed_s": 0.0, "other_cpu_seconds": 0.0})
                entry["elapsed_s"] += elapsed
                entry["other_cpu_seconds"] += other

    def summary(self):
        """Totals over every section: elapsed_s, other_cpu_seconds, share of the machine's
        capacity, fit_for_record, and the per-section figures."""
        elapsed = sum(s["elapsed_s"] for s in self.sections.values())
        other = sum(s["other_cpu_seconds"] for s in self.sections.values())
        capacity = elapsed * logical_cpus()
        share = other / capacity if capacity else 0.0
        return {
            "elapsed_s": elapsed,
            "other_cpu_seconds": other,
            "logical_cpus": logical_cpus(),
            "share": share,
            "max_share": self.max_other_share,
            "fit_for_record": share <= self.max_other_share,
            "sections": dict(self.sections),
        }

    def verdict(self):
        """One line for a report's head."""
        s = self.summary()
        state = "fit for the record" if s["fit_for_record"] else "NOT fit for the record"
        return (
            f"Load check: other processes used {s['other_cpu_seconds']:.1f} CPU-seconds during the "
            f"{s['elapsed_s']:.0f} s of timed sections ({100 * s['share']:.1f} % of {s['logical_cpus']} CPUs; "
            f"limit {100 * s['max_share']:.0f} %): {state}."
        )


def _process_cpu_seconds():
    """pid -> (user + system CPU seconds so far, command line) for every readable process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / _TICKS, command)
        except (OSError, IndexError, ValueError):
            continue
    return found


def other_busy_processes(when, interval=2.0, threshold=10.0):
    """Processes outside this one's tree that used more than ``threshold`` % of a CPU over
    ``interval`` seconds: a benchmark sharing the CPU with them measures the sharing."""
    if not Path("/proc/self/stat").exists():
        return []
    before = _process_cpu_seconds()
    time.sleep(interval)
    after = _process_cpu_seconds()
    own = own_tree({pid: parent for pid, (parent, _) in _live_processes().items()})
    busy = []
    for pid, (seconds, command) in after.items():
        if pid in own or pid not in before:
            continue
        percent = 100.0 * (seconds - before[pid][0]) / interval
        if percent > threshold:
            busy.append({"when": when, "pid": pid, "cpu_percent": percent, "command": command})
    return busy
