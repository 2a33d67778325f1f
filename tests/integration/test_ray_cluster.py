"""The Ray backend (monitor/cluster/) on a real local Ray cluster: a head and two worker nodes, each started as its
own `ray start` process on 127.0.0.1 with one CPU, shared by the tests of this module (Ray starts slowly).

End to end: an nginx-rtmp stream read by a stream actor on a worker node, its alert over Mosquitto. Failover:
the raylet of the node that runs one stream is SIGKILLed just before a known picture appears on it; the stream is
live again on the other worker node within 15 s, the picture is alerted, and no alert is lost or doubled.
Joins and drains: a node started while the monitor runs gets an actor and a stream; its raylet stopped, the stream
moves on (`reconnecting`, then live).
The fixture stops only the processes it started (found by the cluster's own ports), never with `ray stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd
from tests.conftest import MonitorProcess, MqttCollector, require_tools, run_cli

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(*needles: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            line = cmdline(int(entry.name))
            if any(n in line for n in needles):
                out.append(int(entry.name))
    return out


def with_descendants(pids: list[int]) -> list[int]:
    """These processes and all their children (a raylet's agents rename themselves: no port in their names)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo += children.get(pid, [])
    return out


@dataclass
class RayCluster:
    """A head and worker nodes as separate `ray start` processes; every process of it carries its GCS port."""

    port: int
    node_ports: list[int] = field(default_factory=list)  # each node's raylet port: head first
    session: str = ""  # the head's session folder name: every process of the cluster names it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def env() -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    @classmethod
    def start(cls, workers: int) -> RayCluster:
        c = cls(free_port())
        try:
            c._ray_start("--head", "--port", str(c.port), "--include-dashboard", "false")
            c.session = Path(os.path.realpath("/tmp/ray/session_latest")).name
            for _ in range(workers):
                c._ray_start("--address", c.address)
        except BaseException:
            c.stop()
            raise
        return c

    def _ray_start(self, *args: str) -> None:
        nm = free_port()
        cmd = [str(RAY), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--node-manager-port", str(nm), "--disable-usage-stats"]
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        self.node_ports.append(nm)

    def raylet_pid(self, node_port: int) -> int:
        pids = [p for p in pids_matching(f"--node_manager_port={node_port}") if "raylet" in cmdline(p).split()[0]]
        assert len(pids) == 1, [cmdline(p) for p in pids]
        return pids[0]

    def node_port_of(self, node_id: str) -> int:
        for n in self.nodes():
            if n["NodeID"] == node_id:
                return int(n["NodeManagerPort"])
        raise KeyError(node_id)

    def nodes(self) -> list[dict[str, object]]:
        keys = ("NodeID", "NodeManagerPort", "Alive")
        script = (f"import json, ray; ray.init(address={self.address!r}, configure_logging=False, "
                  f"log_to_driver=False); print(json.dumps([{{k: n[k] for k in {keys!r}}} for n in ray.nodes()]))")
        out = subprocess.run([sys.executable, "-c", script], env=self.env(), capture_output=True, text=True,
                             timeout=60, check=True)
        listed: list[dict[str, object]] = json.loads(out.stdout.strip().splitlines()[-1])
        return listed

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process that names this cluster's ports (ours alone)."""
        # Ray names the machine's own address in some command lines (not 127.0.0.1): the GCS port and the session
        needles = [f":{self.port} ", f"gcs_server_port={self.port}", *(f"--node_manager_port={p}" for p in
                                                                       self.node_ports)]
        if self.session.startswith("session_2"):
            needles.append(self.session)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = with_descendants([p for p in pids_matching(*needles) if "ray" in cmdline(p)])
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and "(Z" not in _stat(p)]
                time.sleep(0.2)


def _stat(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    require_tools()
    if not RAY.exists():
        msg = "needs Ray: pip install '.[ray]' (scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    # A local ray.init() elsewhere leaves a token in ~/.ray that would switch these processes to token auth
    # half-way; the cluster here (and the monitor and CLI processes, which inherit this) run without it.
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        c = RayCluster.start(workers=2)
        yield c
        c.stop()
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def ray_config(mosquitto: Mosquitto, cluster: RayCluster, streams: dict[str, str], bank_csv: Path,
               node: str) -> dict[str, object]:
    return {"node": node, "broker": {"url": mosquitto.url, "topic_prefix": node},
            "cluster": {"engine": "ray", "address": cluster.address, "namespace": node, "heartbeat_s": 1.0,
                        "dead_after_s": 3.0, "node_poll_s": 1.0},
            "streams": [{"id": sid, "url": url} for sid, url in streams.items()],
            "banks": [{"name": "known", "path": str(bank_csv)}],
            "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}}


def actors_now(cluster: RayCluster, namespace: str) -> list[dict[str, object]]:
    done = run_cli("cluster", "status", "--address", cluster.address, "--namespace", namespace, "--json")
    assert done.returncode == 0, done.stderr
    actors: list[dict[str, object]] = json.loads(done.stdout)["actors"]
    return actors


def wait_for_actor_of(cluster: RayCluster, namespace: str, stream: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for a in actors_now(cluster, namespace):
            listed = a.get("streams")
            if isinstance(listed, list) and stream in listed:
                return a
        time.sleep(1)
    raise AssertionError(f"no actor runs {stream}")


def alerts(collector: MqttCollector, prefix: str, stream: str) -> list[dict[str, object]]:
    return [m.json() for m in collector.matching(lambda m: m.topic == f"{prefix}/{prefix}/alerts/{stream}")]


def test_a_stream_on_a_worker_node_is_alerted_over_mqtt(
    ray_cluster: RayCluster, mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, known_pngs: list[Path], bank_csv: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "re/#")
    pub = subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("e2e"), duration_s=45, known_png=known_pngs[0],
                                              show=(16.0, 26.0)))
    mon = monitor_factory(ray_config(mosquitto, ray_cluster, {"e2e": nginx_rtmp.rtmp_url("e2e")}, bank_csv, "re"))
    try:
        assert collector.wait_for(lambda m: m.topic == "re/re/streams/e2e" and m.json()["state"] == "live", 60), \
            mon.log()
        actor = wait_for_actor_of(ray_cluster, "re", "e2e", 20)
        head = ray_cluster.nodes()[0]
        ports = {int(str(n["NodeManagerPort"])) for n in ray_cluster.nodes() if n["NodeID"] == actor["node"]}
        assert ports and ports <= set(ray_cluster.node_ports[1:]), (actor, head)  # a worker node, not the head
        got = collector.wait_for(lambda m: m.topic == "re/re/alerts/e2e", 40)
        assert got, mon.log()
        body = got[0].json()
        assert body["bank"] == "known" and body["entry_id"] == "1" and body["stream_id"] == "e2e"
    finally:
        pub.kill()
        pub.wait()
        code = mon.stop()
    log = mon.log()
    assert code == 0, log
    assert "Traceback" not in log


KILL_AT_S = 40.0  # the publisher's clock: the raylet dies here ...
SHOW_AT_S = 44.0  # ... and the known picture appears here on the stream it ran


def test_a_killed_worker_node_moves_its_streams_without_losing_or_doubling_alerts(
    ray_cluster: RayCluster, mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, known_pngs: list[Path], bank_csv: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "rf/#")
    # a: the picture after the kill; b: one picture before it and still on screen after
    shows = {"a": (known_pngs[0], (SHOW_AT_S, 70.0)), "b": (known_pngs[1], (12.0, 70.0))}
    started = time.monotonic()
    pubs = [subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url(sid), duration_s=80, known_png=png, show=show))
            for sid, (png, show) in shows.items()]
    mon = monitor_factory(ray_config(mosquitto, ray_cluster, {s: nginx_rtmp.rtmp_url(s) for s in shows}, bank_csv,
                                     "rf"))
    try:
        for sid in shows:
            assert collector.wait_for(lambda m, s=sid: m.topic == f"rf/rf/streams/{s}" and m.json()["state"] == "live",
                                      60), mon.log()
        victim = wait_for_actor_of(ray_cluster, "rf", "a", 20)
        other = wait_for_actor_of(ray_cluster, "rf", "b", 20)
        assert victim["node"] != other["node"], (victim, other)  # spread over the two worker nodes
        assert collector.wait_for(lambda m: m.topic == "rf/rf/alerts/b", 30), mon.log()
        raylet = ray_cluster.raylet_pid(ray_cluster.node_port_of(str(victim["node"])))
        left = KILL_AT_S - (time.monotonic() - started)
        assert left > 0, f"the set-up took {KILL_AT_S - left:.0f} s: past the moment of the kill"
        time.sleep(left)
        assert not alerts(collector, "rf", "a"), "the picture on a showed before the kill"
        os.kill(raylet, signal.SIGKILL)
        killed = time.time()
        live = collector.wait_for(lambda m: m.topic == "rf/rf/streams/a" and m.json()["state"] == "live"
                                  and _at(m.json()) > killed, 20)
        assert live, mon.log()
        took = _at(live[0].json()) - killed
        print(f"failover: stream a live again on the other node {took:.1f} s after its raylet was killed")
        assert took <= 15.0, (live[0].json(), killed)
        moved = wait_for_actor_of(ray_cluster, "rf", "a", 10)
        assert moved["node"] == other["node"]
        assert collector.wait_for(lambda m: m.topic == "rf/rf/alerts/a", 30), mon.log()
        time.sleep(3)  # what else would come
    finally:
        for p in pubs:
            p.kill()
            p.wait()
        code = mon.stop()
    log = mon.log()
    assert code == 0, log
    reconnecting = [m.json() for m in collector.matching(lambda m: m.topic == "rf/rf/streams/a")
                    if m.json()["state"] == "reconnecting"]
    assert any("stream actor" in str(s.get("detail")) for s in reconnecting), reconnecting
    for sid in shows:
        got = alerts(collector, "rf", sid)
        assert got, f"no alert for {sid}:\n{log}"
        ids = [a["alert_id"] for a in got]
        assert len(ids) == len(set(ids)), ids  # no alert twice
        assert len({a["incident_id"] for a in got}) == 1, got  # one picture, one incident, moved or not


def _at(state: dict[str, object]) -> float:
    at = state["at"]
    assert isinstance(at, int | float), state
    return float(at)


def test_a_joined_node_gets_an_actor_and_streams_and_a_drained_one_hands_them_on(
    ray_cluster: RayCluster, mosquitto: Mosquitto, nginx_rtmp: NginxRtmp, bank_csv: Path,
    collector_factory: Callable[..., MqttCollector], monitor_factory: Callable[..., MonitorProcess],
) -> None:
    """A node started while the monitor runs gets a stream actor and, by rebalancing, a stream; its raylet then
    stopped gracefully, that stream says `reconnecting` and is live again on another node."""
    collector = collector_factory(mosquitto.port, "rj/#")
    ids = ("j1", "j2", "j3")
    pubs = [subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url(s), duration_s=120, size="320x180"))
            for s in ids]
    cfg = ray_config(mosquitto, ray_cluster, {s: nginx_rtmp.rtmp_url(s) for s in ids}, bank_csv, "rj")
    section = cfg["cluster"]
    assert isinstance(section, dict)
    section["rebalance_s"] = 2.0
    mon = monitor_factory(cfg)
    t0 = time.monotonic()
    try:
        for sid in ids:
            assert collector.wait_for(lambda m, s=sid: m.topic == f"rj/rj/streams/{s}" and m.json()["state"] == "live",
                                      60), mon.log()
        before = {str(n["NodeID"]) for n in ray_cluster.nodes()}
        ray_cluster._ray_start("--address", ray_cluster.address)  # a node joins
        joined = next(str(n["NodeID"]) for n in ray_cluster.nodes() if str(n["NodeID"]) not in before)
        deadline, there = time.monotonic() + 45, list[str]()
        while time.monotonic() < deadline and not there:
            there = [str(s) for a in actors_now(ray_cluster, "rj") if a.get("node") == joined
                     for s in _listed(a.get("streams"))]
            time.sleep(0.5)
        assert there, f"no stream placed on the joined node {joined[:12]}:\n{mon.log()}"
        joined_at = time.monotonic() - t0
        raylet = ray_cluster.raylet_pid(ray_cluster.node_port_of(joined))
        os.kill(raylet, signal.SIGTERM)  # the node leaves in order
        drained = time.time()
        moved = there[0]
        live = collector.wait_for(lambda m: m.topic == f"rj/rj/streams/{moved}" and m.json()["state"] == "live"
                                  and _at(m.json()) > drained, 30)
        assert live, mon.log()
        print(f"join: a stream on the joined node {joined_at:.1f} s into the test; drain: {moved} live again "
              f"{_at(live[0].json()) - drained:.1f} s after its node's raylet was stopped")
        again = wait_for_actor_of(ray_cluster, "rj", moved, 10)
        assert again["node"] != joined
    finally:
        for p in pubs:
            p.kill()
            p.wait()
        code = mon.stop()
    log = mon.log()
    assert code == 0, log
    states = [m.json() for m in collector.matching(lambda m: m.topic == f"rj/rj/streams/{moved}")]
    after = [s for s in states if _at(s) > drained]
    assert after and after[0]["state"] == "reconnecting" and "stream actor" in str(after[0].get("detail")), after


def _listed(v: object) -> list[object]:
    return list(v) if isinstance(v, list) else []
