"""nginx-rtmp tells the monitor about a publish; the monitor attaches, alerts, terminates, and the ban holds.
Stream names that collided under the old ids, long names and odd characters each get their own stream or a
refusal, and a decoy's publish_done leaves the real stream watched (issue 12)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from monitor.servers.hooks import ID_KEY_FILE, StreamNamer, route_token
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, free_port, wait_port
from tests.conftest import MonitorProcess, MqttCollector, require_tools

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

SECRET = "test-hook-secret-0123456789"


def monitor_namer(mon: MonitorProcess, timeout_s: float = 20.0) -> StreamNamer:
    """The stream id key the monitor made in its state directory (ids are keyed: tests read the key)."""
    path = Path(mon.log_path).parent / "state" / ID_KEY_FILE
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, mon.log()
        time.sleep(0.1)
    time.sleep(0.1)
    return StreamNamer.load(path)


@pytest.fixture
def hooked_nginx() -> Iterator[tuple[NginxRtmp, int]]:
    require_tools()
    hook_port = free_port()
    base = f"http://127.0.0.1:{hook_port}/hooks/nginx-rtmp?token={SECRET}"
    n = NginxRtmp(notify=f"on_publish {base}; on_publish_done {base}; notify_method post;").start()
    yield n, hook_port
    n.close()


def test_publish_hook_attach_alert_terminate_and_ban(
    mosquitto: Mosquitto,
    hooked_nginx: tuple[NginxRtmp, int],
    known_pngs: list[Path],
    bank_csv: Path,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    nginx, hook_port = hooked_nginx
    collector = collector_factory(mosquitto.port)
    mon = monitor_factory({
        "node": "hooked",
        "broker": {"url": mosquitto.url, "topic_prefix": "h"},
        "banks": [{"name": "known", "path": str(bank_csv), "severity": "high"}],
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "hooks": {"enabled": True, "port": hook_port, "secret": SECRET,
                  "pull_url_templates": {"nginx-rtmp": f"rtmp://127.0.0.1:{nginx.rtmp_port}/{{app}}/{{name}}"}},
        "servers": [{"kind": "nginx-rtmp", "api_url": nginx.http_base}],
    })
    assert collector.wait_for(lambda m: m.topic == "h/hooked/status" and m.json()["state"] == "online", 20)
    time.sleep(1.0)  # the hook server starts right after the broker connection
    url = nginx.rtmp_url("secret-key-1")
    pub = subprocess.Popen(ffmpeg_publish_cmd(url, duration_s=120, known_png=known_pngs[0], show=(4.0, 120.0)),
                           stderr=subprocess.PIPE)
    try:
        alerts = collector.wait_for(lambda m: "/alerts/" in m.topic, 40)
        assert alerts, mon.log()
        alert = alerts[0].json()
        stream_id = alert["stream_id"]
        assert stream_id == monitor_namer(mon).stream_id("nginx-rtmp", "live", "secret-key-1")
        assert stream_id.startswith("nginx-rtmp-live-sec-")
        # The stream name is the publisher's key: the shown URL keeps 3 characters of it.
        assert alert["entry_id"] == "1" and alert["stream_url"].endswith("/live/sec***")

        command = {"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": "terminate",
                   "incident_id": alert.get("incident_id"), "stream_id": stream_id, "moderator": "alice",
                   "reason": "known content", "at": "2026-01-01T00:00:00Z"}
        mqtt_publish.single("h/hooked/commands", json.dumps(command), qos=1, hostname="127.0.0.1",
                            port=mosquitto.port)
        pub.wait(20)  # the server dropped the publisher
        assert pub.returncode != 0
    finally:
        pub.kill()
        pub.wait()
        assert pub.stderr is not None
        pub.stderr.close()

    # The publishing software comes back under the same key: refused by the publish hook.
    again = subprocess.run(ffmpeg_publish_cmd(url, duration_s=5), capture_output=True, text=True, timeout=30)
    assert again.returncode != 0
    log = mon.log()
    assert re.search(f"terminate stream {stream_id} by '?alice'?: done", log), log
    assert "publish refused" in log
    assert "secret-key-1" not in log  # the key reaches neither the log ...
    assert not [m for m in collector.messages if "secret-key-1" in m.topic + m.payload.decode("utf-8", "replace")]
    code = mon.stop()
    assert code == 0 and "Traceback" not in mon.log()

    # The ban is on disk with its reason and author.
    bans = json.loads((Path(mon.log_path).parent / "state" / "bans.json").read_text())
    text = json.dumps(bans)
    assert "secret-key-1" in text and "alice" in text and "known content" in text


def test_discovery_polls_nginx_stat_and_reconciles(
    mosquitto: Mosquitto,
    nginx_rtmp: NginxRtmp,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    collector = collector_factory(mosquitto.port, "d/+/streams/#")
    mon = monitor_factory({
        "node": "disc",
        "broker": {"url": mosquitto.url, "topic_prefix": "d"},
        "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "servers": [{"kind": "nginx-rtmp", "api_url": nginx_rtmp.http_base, "discover": True,
                     "poll_interval_s": 1.0,
                     "pull_url_template": f"rtmp://127.0.0.1:{nginx_rtmp.rtmp_port}/{{app}}/{{name}}"}],
    })
    # Listed first: a stream it cannot pull (a space in the name) and a 150-character name. The first is
    # logged once and skipped, the second watched; neither ends discovery for the streams after them.
    base = f"rtmp://127.0.0.1:{nginx_rtmp.rtmp_port}/live"
    early = [subprocess.Popen(_small_publisher(base, 14.0, "x y"), stderr=subprocess.DEVNULL),
             subprocess.Popen(_small_publisher(f"{base}/{'L' * 150}", 14.0), stderr=subprocess.DEVNULL)]
    time.sleep(2.5)
    try:
        pub = subprocess.run(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("found"), duration_s=8), timeout=60)
    finally:
        for p in early:
            p.kill()
            p.wait()
    assert pub.returncode == 0
    namer = monitor_namer(mon)
    sid = namer.stream_id("nginx-rtmp", "live", "found")
    topic = f"d/disc/streams/{sid}"
    long_topic = f"d/disc/streams/{namer.stream_id('nginx-rtmp', 'live', 'L' * 150)}"
    assert collector.wait_for(lambda m: m.topic == long_topic and bool(m.payload) and m.json()["state"] == "live",
                              10), mon.log()
    assert mon.log().count("not watched") in (1, 2), mon.log()  # once per time it appears in the list
    ended = collector.wait_for(lambda m: m.topic == topic and bool(m.payload) and m.json()["state"] == "ended", 15)
    cleared = collector.wait_for(lambda m: m.topic == topic and m.payload == b"", 5)
    assert mon.stop() == 0
    states = [m.json()["state"] for m in collector.matching(lambda m: m.topic == topic and bool(m.payload))]
    assert "live" in states, mon.log()
    assert ended and ended[-1].json()["detail"] == "removed"
    assert cleared, "a removed stream's retained state is deleted from the broker"
    assert f"discovery: nginx-rtmp lists new stream {sid}" in mon.log()


def _small_publisher(url: str, duration_s: float, playpath: str | None = None) -> list[str]:
    """ffmpeg pushing a small live stream (320x180, 1 s GOP, ultrafast); `playpath` sends a stream name the
    URL cannot carry (FFmpeg's -rtmp_playpath: spaces, slashes)."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i",
           "testsrc2=size=320x180:rate=15", "-t", str(duration_s), "-c:v", "libx264", "-preset", "ultrafast",
           "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", "15", "-bf", "0"]
    if playpath is not None:
        cmd += ["-rtmp_app", "live", "-rtmp_playpath", playpath]
    return [*cmd, "-f", "flv", url]


def test_finding_names_collide_nowhere_on_real_nginx(
    mosquitto: Mosquitto,
    collector_factory: Callable[..., MqttCollector],
    monitor_factory: Callable[..., MonitorProcess],
) -> None:
    """nginx-rtmp with two applications (`live`, `live-x`) calling the monitor's hook, ffmpeg publishers:
    `live/x-y` and `live-x/y` (one id before), a 150-character name and names with `+ # % ` and non-ASCII
    characters are each watched under an id of their own; names the monitor cannot pull over RTMP (a space,
    a `/`) are refused by the hook, so nginx refuses the publish; the decoy `live-x/y` ending (its
    publish_done) leaves `live/x-y` watched; a second publisher of `live/x-y` is refused (409). No name
    reaches a topic, a stream state or the monitor's log."""
    require_tools()
    hook_port = free_port()
    # The route's own token (python -m monitor.servers.hooks token /hooks/nginx-rtmp), not the secret itself.
    hook = f"http://127.0.0.1:{hook_port}/hooks/nginx-rtmp?token={route_token(SECRET, '/hooks/nginx-rtmp')}"
    notify = f"on_publish {hook}; on_publish_done {hook}; notify_method post;"
    # NginxRtmp writes one application; its `notify` lines end inside it, so a second one can follow.
    nginx = NginxRtmp(notify=f"{notify} }} application live-x {{ live on; {notify}").start()
    try:
        collector = collector_factory(mosquitto.port, "n/+/streams/#")
        mon = monitor_factory({
            "node": "names", "workers": 0,
            "broker": {"url": mosquitto.url, "topic_prefix": "n"},
            "ingest": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
            "hooks": {"enabled": True, "port": hook_port, "secret": SECRET,
                      "pull_url_templates": {"nginx-rtmp": f"rtmp://127.0.0.1:{nginx.rtmp_port}/{{app}}/{{name}}"}},
        })
        wait_port(hook_port, 30, proc=None)
        namer = monitor_namer(mon)
        base = f"rtmp://127.0.0.1:{nginx.rtmp_port}"
        long_name = "L" * 150
        watched = {  # (app, name) -> how ffmpeg publishes it
            ("live", "x-y"): (f"{base}/live/x-y", None, 30.0),
            ("live-x", "y"): (f"{base}/live-x/y", None, 6.0),  # the decoy: ends first
            ("live", long_name): (f"{base}/live/{long_name}", None, 12.0),
            ("live", "a+b#c%41d"): (f"{base}/live", "a+b#c%41d", 12.0),
            ("live", "café-ß-日本"): (f"{base}/live", "café-ß-日本", 12.0),
        }
        refused = {("live", "x y"): (f"{base}/live", "x y"), ("live", "a/b"): (f"{base}/live", "a/b")}
        ids = {key: namer.stream_id("nginx-rtmp", *key) for key in [*watched, *refused]}
        assert len(set(ids.values())) == len(ids)
        pubs = {key: subprocess.Popen(_small_publisher(url, dur, pp), stderr=subprocess.PIPE)
                for key, (url, pp, dur) in watched.items()}
        try:
            def states(key: tuple[str, str]) -> list[str]:
                topic = f"n/names/streams/{ids[key]}"
                return [m.json()["state"] for m in collector.matching(lambda m: m.topic == topic and bool(m.payload))]

            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and not all("live" in states(k) for k in watched):
                time.sleep(0.2)
            assert {k: "live" in states(k) for k in watched} == dict.fromkeys(watched, True), mon.log()

            for key, (url, playpath) in refused.items():
                r = subprocess.run(_small_publisher(url, 2.0, playpath), capture_output=True, timeout=30)
                assert r.returncode != 0, key  # the hook said 403: nginx refused the publish
            # A second publisher of live/x-y while the first is live: the hook refuses it (409).
            r = subprocess.run(_small_publisher(f"{base}/live/x-y", 2.0), capture_output=True, timeout=30)
            assert r.returncode != 0

            pubs[("live-x", "y")].wait(20)  # the decoy ends: nginx sends its publish_done
            decoy_topic = f"n/names/streams/{ids[('live-x', 'y')]}"
            assert collector.wait_for(lambda m: m.topic == decoy_topic and m.payload == b"", 15), mon.log()
            time.sleep(3.0)
            real = states(("live", "x-y"))
            assert real[-1] == "live" and "ended" not in real, (real, mon.log())
            assert pubs[("live", "x-y")].poll() is None  # still publishing, still watched
        finally:
            for p in pubs.values():
                p.kill()
                p.wait()
                assert p.stderr is not None
                p.stderr.close()
        for key in refused:
            assert not states(key), key
        log = mon.log()
        assert log.count("publish refused") >= 3 and "cannot watch it" in log
        for secret_like in (long_name, "a+b#c", "café", "x y"):
            assert secret_like not in log, secret_like
            assert not [m for m in collector.messages
                        if secret_like in m.topic + m.payload.decode("utf-8", "replace")], secret_like
        assert mon.stop() == 0 and "Traceback" not in mon.log()
    finally:
        nginx.close()
