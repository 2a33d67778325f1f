"""`monitor eval`: the live run: broker, streams, generators and the monitor, and an MQTT subscriber recording the
alerts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.config.models import MonitorConfig
from monitor_tools import TOOLS_ROOT
from monitor_tools.eval.live.common import Progress, say
from monitor_tools.eval.live.plan import EvalOptions
from test_streams.live import (
    Appearance,
)


class AlertSubscriber:
    """A real MQTT subscriber on its own network thread: every alert (deduplicated by alert_id) with the wall time
    it arrived, and the stream states."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.alerts: list[tuple[dict[str, Any], float]] = []
        self.states: dict[str, list[tuple[str, float]]] = {}
        self.details: dict[str, list[str]] = {}  # stream -> "state: detail" of every change but live
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._client: Any = None

    def start(self, timeout_s: float = 15.0) -> AlertSubscriber:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from monitor.contracts import topics

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"eval-{os.getpid()}-{time.time_ns()}")
        subscribed = threading.Event()

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            c.subscribe([(topics.all_alerts(self.prefix), 1), (topics.all_stream_states(self.prefix), 1)])

        client.on_connect = on_connect
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = self._on_message
        client.connect(self.host, self.port)
        client.loop_start()
        self._client = client
        if not subscribed.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"could not subscribe on {self.host}:{self.port}")
        return self

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        try:
            body = json.loads(msg.payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(body, dict):
            return
        with self._lock:
            if "/alerts/" in msg.topic:
                aid = str(body.get("alert_id"))
                if aid not in self._seen:
                    self._seen.add(aid)
                    self.alerts.append((body, now))
            elif "/streams/" in msg.topic and "state" in body:
                sid = str(body.get("stream_id"))
                self.states.setdefault(sid, []).append((str(body["state"]), now))
                if body["state"] != "live":
                    self.details.setdefault(sid, []).append(f"{body['state']}: {body.get('detail') or ''}")

    def snapshot(self) -> tuple[list[tuple[dict[str, Any], float]], dict[str, list[tuple[str, float]]]]:
        with self._lock:
            return list(self.alerts), {k: list(v) for k, v in self.states.items()}

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


class HlsServer:
    """A tiny HTTP server for PyAV-written HLS folders (the embedded path; nginx serves them on the real one).

    Its own process (`python -m http.server`): served from a thread of this busy process (event loop, broker,
    engine), FFmpeg's HLS reader saw the live playlist end after every segment."""

    def __init__(self, root: Path) -> None:
        from test_streams.infra import free_port

        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HlsServer:
        from test_streams.infra import wait_port

        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def close(self) -> None:
        from test_streams.infra import stop_process

        stop_process(self.proc)


@dataclass
class LiveRun:
    truths: dict[str, dict[str, Any]]
    alerts: list[tuple[dict[str, Any], float]]
    states: dict[str, list[tuple[str, float]]]
    details: dict[str, list[str]]
    infra: str
    transport: str
    monitor: str
    generator_rc: dict[str, int | None]
    run_s: float
    mcfg: MonitorConfig
    streams_ended_at: float  # wall time the generators had all finished


def monitor_config_data(base: dict[str, Any], *, broker_url: str, prefix: str, streams: list[dict[str, str]],
                        bank: Path, state_dir: Path) -> dict[str, Any]:
    """The eval's monitor config: the user's (matching, sampling, incidents, ingest, workers...) with the eval's
    broker, streams, bank and state; hooks, metrics and server control off (nothing else listens)."""
    data = {k: v for k, v in base.items() if k not in ("streams", "banks", "servers", "hooks", "metrics")}
    broker = {"url": broker_url, "topic_prefix": prefix}
    data["broker"] = broker
    data["node"] = "eval"
    data["streams"] = streams
    data["banks"] = [{"name": "eval-known", "path": str(bank)}]
    data["state_dir"] = str(state_dir)
    ingest = dict(base.get("ingest") or {})
    ingest.setdefault("backoff_initial_s", 0.2)  # the eval's streams exist from the start: reconnect fast
    ingest.setdefault("backoff_max_s", 1.0)
    data["ingest"] = ingest
    data.setdefault("log_level", "warning")
    return data


def _generator_cmd(output: str, plan: Path, truth: Path, opts: EvalOptions, seed: int) -> list[str]:
    return [sys.executable, "-m", "test_streams.live", output, "--plan", str(plan), "--truth", str(truth),
            "--duration", f"{opts.duration_s:g}", "--seed", str(seed), "--gop", f"{opts.gop_s:g}",
            "--fps", str(opts.fps), "--width", str(opts.width), "--height", str(opts.height), "--scenes"]


def _cwd() -> str | None:
    return str(TOOLS_ROOT) if (TOOLS_ROOT / "pyproject.toml").exists() else None


async def run_live(opts: EvalOptions, plans: Sequence[Sequence[Appearance]], bank: Path, work: Path,
                   base_cfg: dict[str, Any], infra: str, transport: str) -> LiveRun:
    from monitor.config.models import build_config
    from test_streams.infra import Mosquitto, NginxRtmp, free_port, stop_process

    prefix = "eval"
    sids = [f"eval-{i + 1}" for i in range(opts.streams)]
    for sid, plan in zip(sids, plans, strict=True):
        (work / f"plan-{sid}.json").write_text(json.dumps({"shows": [a.to_json() for a in plan]}, indent=1))
    async with contextlib.AsyncExitStack() as stack:
        mosq: Mosquitto | None = None
        nginx: NginxRtmp | None = None
        broker_url: str
        if infra == "real":
            mosq = Mosquitto().start()
            stack.callback(mosq.close)
            broker_url = mosq.url
            if transport in ("rtmp", "hls"):
                nginx = NginxRtmp(hls_fragment_s=max(1, round(opts.gop_s))).start()
                stack.callback(nginx.close)
        else:
            from test_streams.broker import EmbeddedBroker

            broker = await stack.enter_async_context(EmbeddedBroker())
            broker_url = broker.url
        hls_server: HlsServer | None = None
        if transport == "hls" and nginx is None:
            (work / "hls").mkdir(exist_ok=True)
            hls_server = HlsServer(work / "hls").start()
            stack.callback(hls_server.close)
        outputs: dict[str, str] = {}
        urls: dict[str, str] = {}
        for sid in sids:
            if transport == "tcp":
                port = free_port()
                outputs[sid] = f"tcp://127.0.0.1:{port}?listen=1"
                urls[sid] = f"tcp://127.0.0.1:{port}"
            elif nginx is not None:
                outputs[sid] = nginx.rtmp_url(sid)
                urls[sid] = nginx.rtmp_url(sid) if transport == "rtmp" else nginx.hls_url(sid)
            else:
                assert hls_server is not None
                outputs[sid] = str(work / "hls" / sid / "index.m3u8")
                urls[sid] = f"http://127.0.0.1:{hls_server.port}/{sid}/index.m3u8"
        data = monitor_config_data(base_cfg, broker_url=broker_url, prefix=prefix,
                                   streams=[{"id": sid, "url": urls[sid]} for sid in sids], bank=bank,
                                   state_dir=work / "state")
        mcfg = build_config(data, "eval monitor config")
        sub = AlertSubscriber("127.0.0.1", mcfg.broker.port, prefix)
        await asyncio.to_thread(sub.start)
        stack.callback(sub.stop)
        gens: dict[str, subprocess.Popen[bytes]] = {}

        def kill_generators() -> None:
            for g in gens.values():
                stop_process(g)

        stack.callback(kill_generators)
        for i, sid in enumerate(sids):
            with open(work / f"generator-{sid}.log", "wb") as glog:
                gens[sid] = subprocess.Popen(
                    _generator_cmd(outputs[sid], work / f"plan-{sid}.json", work / f"truth-{sid}.json", opts,
                                   opts.seed * 100 + i + 1),
                    stdout=subprocess.DEVNULL, stderr=glog, cwd=_cwd())
        t_start = time.monotonic()
        monitor_kind: str
        stop = asyncio.Event()
        engine_task: asyncio.Task[None] | None = None
        mon_proc: subprocess.Popen[bytes] | None = None
        if infra == "real":
            import yaml

            monitor_kind = "process (python -m monitor run)"
            cfg_path = work / "monitor.yaml"
            cfg_path.write_text(yaml.safe_dump(data))
            with open(work / "monitor.log", "wb") as mlog:
                mon_proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
                                            stdout=mlog, stderr=subprocess.STDOUT, cwd=_cwd())
        else:
            from monitor.app.engine import Engine, load_banks

            monitor_kind = "in-process Engine"
            mon_logger = logging.getLogger("monitor")
            old_level = mon_logger.level
            mon_logger.setLevel(logging.ERROR)  # worker processes take this level too: keep stderr for the bar
            stack.callback(mon_logger.setLevel, old_level)
            engine = Engine(mcfg, load_banks(mcfg))
            engine_task = asyncio.create_task(engine.run(stop))
        bar = Progress("streams", opts.duration_s, enabled=opts.progress)
        deadline = opts.duration_s + 90.0
        while any(g.poll() is None for g in gens.values()):
            elapsed = time.monotonic() - t_start
            alerts, states = sub.snapshot()
            live = sum(1 for s in sids if states.get(s) and states[s][-1][0] == "live")
            bar.update(elapsed, f"{min(elapsed, opts.duration_s):.0f}/{opts.duration_s:.0f} s, "
                                f"{live}/{len(sids)} live, {len(alerts)} alerts")
            if engine_task is not None and engine_task.done():
                break
            if mon_proc is not None and mon_proc.poll() is not None:
                break
            if elapsed > deadline:
                break
            await asyncio.sleep(0.5)
        bar.close()
        streams_ended_at = time.time()
        # The last keyframes are still on their way (HLS: a segment or two behind).
        await asyncio.sleep(3.0 + (3 * opts.gop_s if transport == "hls" else 0.0))
        run_s = time.monotonic() - t_start
        kill_generators()
        if engine_task is not None:
            stop.set()
            await engine_task
        if mon_proc is not None:
            await asyncio.to_thread(stop_process, mon_proc, 30)
            if mon_proc.returncode not in (0, None):
                say(f"the monitor exited with {mon_proc.returncode}; see {work / 'monitor.log'}", opts.progress)
        await asyncio.sleep(0.5)
        alerts, states = sub.snapshot()
        truths: dict[str, dict[str, Any]] = {}
        for sid in sids:
            path = work / f"truth-{sid}.json"
            if path.exists():
                truths[sid] = json.loads(path.read_text())
            else:
                say(f"generator {sid} wrote no ground truth (exit {gens[sid].returncode}); "
                     f"see {work / f'generator-{sid}.log'}", opts.progress)
        rcs = {sid: g.returncode for sid, g in gens.items()}
    return LiveRun(truths, alerts, states, dict(sub.details), infra, transport, monitor_kind, rcs, run_s, mcfg,
                   streams_ended_at)
