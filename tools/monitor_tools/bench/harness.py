"""What the live benchmarks share: the main() scaffolding around a JSON report, and CPU and memory of process trees
read from /proc.

`run_report` runs a benchmark's body with SIGTERM turned into KeyboardInterrupt (so every helper a body started is
stopped by its own `finally`/context managers), in a scratch folder removed afterwards, and prints the report as
one JSON document: exit 0, or 130 with `"interrupted": true` and what was measured so far.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

try:  # looked up here, not in the forked child, where loading a library could deadlock
    _PRCTL: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent() -> None:
    """Runs in a child before exec (`preexec_fn`): if the benchmark is killed outright, the child gets SIGTERM."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the third (state) on: index 0 is the state, 1 the parent, 11/12 utime/stime."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # comm may hold spaces and parentheses
    except OSError:
        return None


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes."""
    total = 0.0
    for pid in pids:
        fields = stat_fields(pid)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, by one scan of /proc."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = stat_fields(int(d))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_s(pid: int) -> float:
    """utime + stime of a process and its live descendants, plus what its reaped children used."""
    root = stat_fields(pid)
    total = sum(int(x) for x in root[11:15]) / CLK_TCK if root is not None else 0.0  # utime stime cutime cstime
    return total + proc_cpu_s(descendants(pid))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except OSError:
            pass
    return total


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_report(report: dict[str, Any], body: Callable[[Path], None], *, started: float, work_prefix: str,
               log: Callable[[str], None]) -> int:
    """Run `body(work)` filling `report`, then print it as JSON. `report["environment"]` gets the load average at
    the end and `report["elapsed_s"]` the seconds since `started` (time.perf_counter)."""
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _sigterm)
    work = Path(tempfile.mkdtemp(prefix=work_prefix))
    try:
        body(work)
    except KeyboardInterrupt:
        log("interrupted: helpers stopped")
        report["interrupted"] = True
        print(json.dumps(report, indent=2))
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(work, ignore_errors=True)
    report["environment"]["loadavg_at_end"] = loadavg()
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


def start_alert_subscriber(port: int, client_name: str, on_message: Callable[[Any, Any, Any], None],
                           topic: str = "bench/+/alerts/#") -> Any:
    """A paho MQTT client on 127.0.0.1:port subscribed to topic at QoS 1 (before it returns), its network loop
    in its own thread; the benchmarks' alert collectors. Stop it with loop_stop() and disconnect()."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_name}-{os.getpid()}")
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not ready.wait(10):
        client.loop_stop()
        raise RuntimeError("could not subscribe to the broker")
    return client
