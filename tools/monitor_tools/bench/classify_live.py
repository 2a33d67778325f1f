"""`monitor bench classify` on live parts: nginx-rtmp, ffmpeg publishers, `monitor run` (worker processes), Mosquitto.

- `live_ab` (`--live N`): the hash path's keyframe-to-alert p50/p95 at N live streams, without and with the
  classifier at every 4th sample (tools/monitor_tools/bench/classify.py has the in-process A/B).
- `clean_run` (`--clean-minutes N`): one stream of natural pictures (tools/test_streams/natural.py: the installed
  wallpaper and sample-image packages, each picture a few seconds with a slow zoom) for N minutes through the
  demonstration classifier at its config defaults; what it classified, the highest score of each label (from the
  monitor's own /metrics, monitor/ops/classifier_metrics.py) and the classification alerts and incidents it
  raised (the issue's target: none).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from monitor_tools.bench.classify import log_progress, ms, pct

TESTCARD_THRESHOLD = 0.6


class AlertSubscriber:
    """Every alert and incident message under a topic prefix, with when it arrived."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}")
        self.prefix = prefix
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe([(f"{self.prefix}/+/alerts/#", 1), (f"{self.prefix}/+/incidents/#", 1)])

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        with self.lock:
            self.messages.append((time.time(), str(msg.topic), json.loads(msg.payload)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The messages of alerts ("alerts") or incidents ("incidents")."""
        with self.lock:
            return [m for _, topic, m in self.messages if f"/{kind}/" in topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def natural_clip(path: Path, seconds: float, fps: int = 25) -> dict[str, Any]:
    """An H.264 FLV clip of the natural corpus, each picture an equal share of `seconds` (at least 2 s) with a slow
    zoom towards a drifting point, 640x360, 2 s GOP; what it holds."""
    import cv2

    from test_streams.natural import WORK_HEIGHT, WORK_WIDTH, load_corpus

    pictures = load_corpus().pictures
    if not pictures:
        raise RuntimeError("no natural pictures installed (tools/test_streams/natural.py SOURCES)")
    per = max(2.0, seconds / len(pictures))
    w, h = WORK_WIDTH, WORK_HEIGHT
    gop = str(2 * fps)
    proc = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                             "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "veryfast",
                             "-pix_fmt", "yuv420p", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-bf", "0",
                             "-f", "flv", str(path)], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    frames = int(seconds * fps)
    for i in range(frames):
        t = i / fps
        k = int(t // per) % len(pictures)
        u = (t % per) / per
        zoom = 1.0 + 0.1 * u
        cw, ch = round(w / zoom), round(h / zoom)
        x0 = round((w - cw) * (0.5 + 0.4 * np.sin(k + u)))
        y0 = round((h - ch) * 0.5)
        crop = pictures[k].image[y0:y0 + ch, x0:x0 + cw]
        proc.stdin.write(cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("ffmpeg could not encode the natural clip")
    shown = min(len(pictures), int(seconds // per) + (1 if seconds % per else 0))
    return {"pictures_shown": shown, "pictures_in_corpus": len(pictures), "seconds_per_picture": round(per, 2),
            "size": f"{w}x{h}", "fps": fps, "gop_s": 2}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A running monitor's /metrics, keyed by sample name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def clean_run(work: Path, minutes: float) -> dict[str, Any]:
    """N minutes of natural pictures through nginx-rtmp to `monitor run` with the demonstration classifier at its
    defaults: samples analysed and classified, the highest score per label, classification alerts and incidents."""
    import yaml

    from monitor_tools.classifier_models import build_testcard_model
    from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port, missing_tools, stop_process

    missing = missing_tools()
    if missing:
        return {"skipped": f"needs {' '.join(missing)}"}
    seconds = minutes * 60
    model = build_testcard_model(work / "testcard.onnx")
    clip = work / "natural.flv"
    log_progress(f"clean: encoding {seconds:.0f} s of natural pictures")
    out: dict[str, Any] = {"minutes": minutes, "clip": natural_clip(clip, seconds)}
    entry = {"kind": "onnx_classifier", "name": "testcard", "model": str(model), "input_size": [64, 64],
             "labels": [{"name": "testcard", "threshold": TESTCARD_THRESHOLD, "severity": "medium"},
                        {"name": "other", "threshold": None}]}  # sampling and incidents: the config defaults
    out["analysis"] = {k: v for k, v in entry.items() if k != "model"}
    nginx, mosq = NginxRtmp().start(), Mosquitto().start()
    mport = free_port()
    mon = pub = None
    sub = AlertSubscriber(mosq.port, "c")
    try:
        cfg = {"node": "clean", "state_dir": str(work / "state-clean"),
               "broker": {"url": mosq.url, "topic_prefix": "c"},
               "streams": [{"id": "natural", "url": nginx.rtmp_url("natural")}],
               "analyses": [{"kind": "known_content"}, entry], "metrics": {"enabled": True, "port": mport},
               "log_level": "warning", "ingest": {"backoff_initial_s": 0.3, "backoff_max_s": 2.0}}
        cfg_path = work / "clean.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        with open(work / "clean.log", "wb") as logf:
            mon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
                                   stdout=logf, stderr=subprocess.STDOUT)
        time.sleep(2.0)  # the monitor connects first: the stream's first pictures are not missed
        pub = subprocess.Popen(ffmpeg_publish_cmd(nginx.rtmp_url("natural"), duration_s=seconds, source=str(clip)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log_progress(f"clean: one live stream for {seconds:.0f} s")
        pub.wait(seconds + 60)
        time.sleep(7.0)  # the worker processes report their classifier figures every 5 s
        got = scrape(mport)
    finally:
        stop_process(pub, 2)
        stop_process(mon, 20)
        sub.close()
        nginx.close()
        mosq.close()

    def metric(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    inferences = {o: int(metric("monitor_classifier_inferences_total", analysis="testcard", outcome=o))
                  for o in ("below_threshold", "over_threshold", "failed")}
    alerts = sub.of("alerts")
    incidents = {m["incident_id"] for m in sub.of("incidents") if m.get("kind") == "classification"}
    out.update({
        "samples_analysed": int(metric("monitor_samples_total", stream="natural")),
        "samples_classified": inferences["below_threshold"] + inferences["over_threshold"],
        "inferences": inferences,
        "skipped_by_budget": int(metric("monitor_classifier_skipped_total", analysis="testcard")),
        "dropped": {r: int(metric("monitor_classifier_dropped_total", analysis="testcard", reason=r))
                    for r in ("queue_full", "stale")},
        "max_score": {lbl: round(metric("monitor_classifier_max_score", analysis="testcard", label=lbl), 4)
                      for lbl in ("testcard", "other")},
        "threshold": TESTCARD_THRESHOLD,
        "classification_alerts": sum(1 for a in alerts if a.get("kind") == "classification"),
        "classification_incidents": len(incidents),
        "match_alerts": sum(1 for a in alerts if a.get("kind") == "match"),
    })
    out["incidents_zero"] = out["classification_incidents"] == 0 and out["classification_alerts"] == 0
    log_progress(f"clean: {out['samples_classified']} classified, max {out['max_score']}, "
                 f"{out['classification_incidents']} incidents")
    return out


def live_ab(model: Path, work: Path, streams: int, seconds: float, reverse: bool = False) -> dict[str, Any]:
    """Live: nginx-rtmp, `streams` copy publishers of a clip showing a known image 2 s in every 10 s, `monitor run`
    (worker processes) and Mosquitto; keyframe packet read (the alert's received_at) to the alert's arrival at a
    subscriber, p50/p95, without and with the classifier at every 4th sample, one after the other."""
    import subprocess

    import paho.mqtt.client as paho
    import yaml
    from paho.mqtt.enums import CallbackAPIVersion
    from PIL import Image

    from monitor.ingest.hashfiles import hash_file
    from pipelines.banks import format_bank
    from test_streams.images import known_image
    from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, missing_tools, stop_process

    missing = missing_tools()
    if missing:
        return {"skipped": f"needs {' '.join(missing)}"}
    png = work / "known.png"
    Image.fromarray(known_image(0)).save(png)
    bank = work / "bank.csv"
    bank.write_text(format_bank([next(hash_file(png)).hex], "csv", "pdq", ["known.png"]))
    clip = work / "clip.flv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-loop", "1", "-framerate", "25", "-i", str(png), "-filter_complex",
                    "[1:v]scale=640:360,format=yuv420p[k];[0:v][k]overlay=enable='between(mod(t,10),5,7)'"
                    ":shortest=1[v]", "-map", "[v]", "-t", "20", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-bf", "0",
                    "-f", "flv", str(clip)], check=True)
    out: dict[str, Any] = {"streams": streams, "seconds": seconds, "clip": "640x360 25 fps, 2 s GOP, known "
                           "image 2 s in every 10 s, published with -c copy"}
    nginx, mosq = NginxRtmp().start(), Mosquitto().start()
    try:
        halves: list[tuple[str, list[dict[str, Any]]]] = [
            ("without_classifier", [{"kind": "known_content"}]),
            ("with_classifier_every_4th", [{"kind": "known_content"}, {
                "kind": "onnx_classifier", "name": "bench", "model": str(model), "input_size": [224, 224],
                "output": "logits_softmax", "labels": [{"name": f"c{i}", "threshold": None} for i in range(1000)],
                "sampling": {"every_k": 4, "dense_every": 4}}])]
        out["order"] = [h[0] for h in (halves[::-1] if reverse else halves)]
        for label, analyses in (halves[::-1] if reverse else halves):
            arrivals: list[tuple[float, dict[str, Any]]] = []
            lock = threading.Lock()

            def on_message(client: Any, userdata: Any, msg: Any,
                           arrivals: list[tuple[float, dict[str, Any]]] = arrivals,
                           lock: threading.Lock = lock) -> None:
                with lock:
                    arrivals.append((time.time(), json.loads(msg.payload)))

            sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}")
            sub.on_connect = lambda c, u, f, rc, p: c.subscribe("b/+/alerts/#", qos=1)
            sub.on_message = on_message
            sub.connect("127.0.0.1", mosq.port)
            sub.loop_start()
            names = [f"s{i}" for i in range(streams)]
            pubs = [subprocess.Popen(ffmpeg_publish_cmd(nginx.rtmp_url(n), duration_s=seconds + 30,
                                                        source=str(clip)), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for n in names]
            cfg = {"node": "bench", "state_dir": str(work / f"state-{label}"),
                   "broker": {"url": mosq.url, "topic_prefix": "b"},
                   "streams": [{"id": n, "url": nginx.rtmp_url(n)} for n in names],
                   "banks": [{"name": "known", "path": str(bank)}],
                   # every stream shows the same entry: no quarantine as a noisy entry
                   "incidents": {"close_after_s": 2.0, "quarantine_streams": 100_000}, "analyses": analyses,
                   "log_level": "warning",
                   "ingest": {"backoff_initial_s": 0.3, "backoff_max_s": 2.0}}
            cfg_path = work / f"{label}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            log_path = work / f"{label}.log"
            with open(log_path, "wb") as logf:
                mon = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg_path)],
                                       stdout=logf, stderr=subprocess.STDOUT)
            log_progress(f"{label}: {streams} live streams for {seconds:.0f} s")
            time.sleep(seconds)
            stop_process(mon, 20)
            for p in pubs:
                stop_process(p, 2)
            sub.loop_stop()
            sub.disconnect()
            lat = [t - _iso(a["received_at"]) for t, a in arrivals if a.get("kind") == "match"]
            row = {"alerts": len(lat), "streams_alerted": len({a["stream_id"] for _, a in arrivals}),
                   "keyframe_to_alert_p50_ms": ms(pct(lat, 50)), "keyframe_to_alert_p95_ms": ms(pct(lat, 95)),
                   "classification_alerts": sum(1 for _, a in arrivals if a.get("kind") == "classification")}
            out[label] = row
            log_progress(f"{label}: {row}")
    finally:
        nginx.close()
        mosq.close()
    a, b = (out[k]["keyframe_to_alert_p95_ms"] for k in ("without_classifier", "with_classifier_every_4th"))
    out["p95_change_pct"] = round((b - a) / a * 100, 1) if a and b is not None else None
    return out


def _iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


