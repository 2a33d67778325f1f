"""`monitor demo`: the whole path on one machine with nothing installed but this package.

PyAV encodes two live test streams (one shows three known images at known times, one never does) and serves
them as MPEG-TS over TCP on 127.0.0.1; an embedded MQTT broker takes the alerts; the console prints them; the
summary compares what was shown with what was detected. With ONNX Runtime installed (the `onnx` extra), the
known stream also shows a colour-bar test card, which the project's demonstration classifier
(tools/monitor_tools/classifier_models.py) alerts on beside the hash alerts. The generators run as subprocesses: in
one process an
encoding thread and a reading thread starve each other (seen with PyAV's blocking muxer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from monitor.app.engine import Engine, load_banks
from monitor.config.models import build_config
from monitor.console.printer import run_console
from monitor.ingest.hashfiles import hash_file
from pipelines.banks import format_bank
from test_streams.broker import EmbeddedBroker, free_port
from test_streams.images import known_image
from test_streams.infra import stop_process, wait_listening

log = logging.getLogger(__name__)

SHOWS = [(0, 6.0, 12.0), (1, 18.0, 24.0), (2, 30.0, 34.0)]  # (image seed, start s, end s)
CARD_SHOW = (24.5, 29.5)  # the test card on demo-known, for the classifier


def _classifier_ready() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _make_classifier(folder: Path) -> tuple[dict[str, Any], Path]:
    """The demonstration model and the card picture; the analysis config entry."""
    from PIL import Image

    from monitor_tools.classifier_models import build_testcard_model, colour_bar_card

    model = build_testcard_model(folder / "testcard.onnx")
    card = folder / "testcard.png"
    Image.fromarray(colour_bar_card()).save(card)
    entry = {"kind": "onnx_classifier", "name": "testcard", "model": str(model), "input_size": [64, 64],
             "labels": [{"name": "testcard", "threshold": 0.6, "severity": "low"},
                        {"name": "other", "threshold": None}],
             "sampling": {"every_k": 1}, "incidents": {"confirm_k": 2, "confirm_n": 3, "window_s": 10}}
    return entry, card


def _make_bank(folder: Path) -> Path:
    from PIL import Image

    hexes, labels = [], []
    for seed, _, _ in SHOWS:
        png = folder / f"known-{seed}.png"
        Image.fromarray(known_image(seed)).save(png)
        fh = next(hash_file(png))
        hexes.append(fh.hex)
        labels.append(png.name)
    bank = folder / "demo-bank.csv"
    bank.write_text(format_bank(hexes, "csv", "pdq", labels))
    return bank


LINGER_S = 3.0  # how long a demo stream's connection stays open after its last frame


def _start_generator(port: int, duration: float, shows: list[tuple[int, float, float]], seed: int,
                     truth: Path, card: Path | None = None) -> subprocess.Popen[bytes]:
    # --linger: the truth file appears when every frame is sent, and the connection stays open a while after it, so
    # the demo stops watching the stream before the monitor could see its end as a dropped connection.
    cmd = [sys.executable, "-m", "test_streams.live", f"tcp://127.0.0.1:{port}?listen=1",
           "--duration", str(duration), "--seed", str(seed), "--truth", str(truth), "--linger", str(LINGER_S)]
    for img, start, end in shows:
        cmd += ["--show", f"{img}:{start}:{end}"]
    if card is not None:
        cmd += ["--show-file", f"{card}:{CARD_SHOW[0]}:{CARD_SHOW[1]}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def summarize(truth: dict[str, Any], alerts: list[dict[str, Any]], received: dict[str, float],
              stream_id: str, gop_s: float) -> tuple[list[str], int, int]:
    """Lines of the summary table, appearances detected, and false alerts."""
    lines = [f"{'image':<14}{'shown (s)':<14}{'detected at (s)':<18}{'latency from shown':<21}"
             f"{'from keyframe':<14}"]
    detected = 0
    matched_ids: set[str] = set()
    alerts = [x for x in alerts if x.get("kind", "match") == "match"]  # classifications have their own line
    known = [a for a in truth["appearances"] if a.get("source") is None]
    for k, a in enumerate(known):
        hits = [x for x in alerts if x["stream_id"] == stream_id and x["entry_id"] == str(k + 1)
                and a["start_s"] - 0.01 <= x["media_time_s"] <= a["end_s"] + gop_s]
        shown = f"{a['start_s']:.0f}-{a['end_s']:.0f}"
        if not hits:
            lines.append(f"known-{a['image']:<8}{shown:<14}{'MISSED':<18}")
            continue
        detected += 1
        first = min(hits, key=lambda x: x["media_time_s"])
        matched_ids.update(x["alert_id"] for x in hits)
        from_shown = received[first["alert_id"]] - a["wall_start"] if a.get("wall_start") else float("nan")
        from_key = received[first["alert_id"]] - _ts(first["received_at"])
        lines.append(f"known-{a['image']:<8}{shown:<14}{first['media_time_s']:<18.2f}"
                     f"{from_shown:<21.2f}{from_key:<14.2f}")
    false_alerts = sum(1 for x in alerts if x["alert_id"] not in matched_ids)
    return lines, detected, false_alerts


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_demo(duration_s: float = 40.0, keep: Path | None = None) -> int:
    folder = Path(tempfile.mkdtemp(prefix="monitor-demo-"))
    try:
        return asyncio.run(_demo(folder, duration_s))
    finally:
        if keep is not None:
            shutil.copytree(folder, keep, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


async def _demo(folder: Path, duration_s: float) -> int:
    # The console below shows alerts and stream states; the engine's own log would say it all twice.
    logging.getLogger("monitor").setLevel(logging.ERROR)
    shows = [s for s in SHOWS if s[2] <= duration_s]
    print(f"demo: generating {len(shows)} known images and their bank in {folder}", flush=True)
    bank = await asyncio.to_thread(_make_bank, folder)
    classifier: dict[str, Any] | None = None
    card: Path | None = None
    if CARD_SHOW[1] <= duration_s and _classifier_ready():
        classifier, card = await asyncio.to_thread(_make_classifier, folder)
        print(f"demo: the known stream shows a test card at {CARD_SHOW[0]:g}-{CARD_SHOW[1]:g} s for the "
              "demonstration classifier (an ONNX model built by the project)", flush=True)
    elif CARD_SHOW[1] <= duration_s:
        print("demo: no classifier (install the onnx extra: pip install -e '.[onnx]' -e 'tools[onnx]')", flush=True)
    known_port, clean_port = free_port(), free_port()
    truth_known, truth_clean = folder / "truth-known.json", folder / "truth-clean.json"
    for stale in (truth_known, truth_clean):  # a kept folder's last run: its files would end the streams at once
        stale.unlink(missing_ok=True)
    gens = [_start_generator(known_port, duration_s, shows, 1, truth_known, card),
            _start_generator(clean_port, duration_s, [], 2, truth_clean)]
    for port, g in zip((known_port, clean_port), gens, strict=True):  # so the first connection is not refused
        wait_listening(port, 60, g)
    received: dict[str, float] = {}
    alerts: list[dict[str, Any]] = []

    def on_alert(a: dict[str, Any]) -> None:
        received[a["alert_id"]] = time.time()
        alerts.append(a)

    try:
        async with EmbeddedBroker() as broker:
            cfg = build_config({
                "node": "demo",
                "state_dir": str(folder / "state"),
                "broker": {"url": broker.url},
                "streams": [{"id": "demo-known", "url": f"tcp://127.0.0.1:{known_port}"},
                            {"id": "demo-clean", "url": f"tcp://127.0.0.1:{clean_port}"}],
                "banks": [{"name": "demo-bank", "path": str(bank)}],
                "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
                **({"analyses": [{"kind": "known_content"}, classifier]} if classifier is not None else {}),
            }, "demo")
            engine = Engine(cfg, load_banks(cfg))
            print(f"demo: embedded MQTT broker on {broker.url}; two {duration_s:.0f} s live streams "
                  f"(640x360, 25 fps, 2 s GOP) on tcp://127.0.0.1; console below\n", flush=True)
            stop = asyncio.Event()
            console_stop = asyncio.Event()
            console = asyncio.create_task(run_console(cfg.broker, as_json=False, stop=console_stop,
                                                      on_alert=on_alert))
            runner = asyncio.create_task(engine.run(stop))
            watched = dict(zip(("demo-known", "demo-clean"), zip(gens, (truth_known, truth_clean),
                                                                      strict=True), strict=True))
            while watched and not runner.done():
                for sid, (g, truth_file) in list(watched.items()):
                    # Every frame sent (its truth file is written) or its publisher gone: stop watching it, so
                    # its end is not reported as a lost connection with reconnect attempts.
                    if truth_file.exists() or g.poll() is not None:
                        await asyncio.sleep(0.5)  # the last frames are on their way through the socket
                        engine.unwatch(sid)  # what the reader had read is still analysed
                        del watched[sid]
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the last samples are still being analysed and alerted
            console_stop.set()
            stop.set()
            await runner
            await console
    finally:
        for g in gens:
            stop_process(g)

    truth = json.loads(truth_known.read_text())
    lines, detected, false_alerts = summarize(truth, alerts, received, "demo-known", truth["gop_s"])
    print("\nsummary (stream demo-known; demo-clean never shows a known image)")
    for ln in lines:
        print("  " + ln)
    expected = sum(1 for a in truth["appearances"] if a.get("source") is None)
    print(f"  expected {expected}, detected {detected}, false alerts {false_alerts}, "
          f"alerts on demo-clean {sum(1 for a in alerts if a['stream_id'] == 'demo-clean')}")
    ok = detected == expected and false_alerts == 0
    if classifier is not None:
        line, classified_ok = _classifier_summary(alerts, received)
        print("  " + line)
        ok = ok and classified_ok
    return 0 if ok else 1


def _classifier_summary(alerts: list[dict[str, Any]], received: dict[str, float]) -> tuple[str, bool]:
    """One line: the test card's classification alert (one expected, on demo-known, while it was shown)."""
    cls = [a for a in alerts if a.get("kind") == "classification"]
    good = [a for a in cls if a["stream_id"] == "demo-known" and CARD_SHOW[0] - 0.01 <= a["media_time_s"]
            <= CARD_SHOW[1] + 2.0]
    if not good:
        return (f"classifier testcard: card shown {CARD_SHOW[0]:g}-{CARD_SHOW[1]:g} s, MISSED; "
                f"{len(cls)} other classification alerts"), False
    a = good[0]
    from_key = received[a["alert_id"]] - _ts(a["received_at"])
    return (f"classifier testcard: card shown {CARD_SHOW[0]:g}-{CARD_SHOW[1]:g} s, alerted at "
            f"{a['media_time_s']:.2f} s (score {a['score']:.2f}, {from_key:.2f} s from its frame), "
            f"{len(cls) - 1} other classification alerts"), len(cls) == 1
