"""The web console end to end in a real browser (Debian's chromium through chromium-driver, Selenium):
ffmpeg -> nginx-rtmp -> monitor -> Mosquitto -> `monitor web` -> the moderators' page, and back as signed commands;
and the wellness defaults with evidence.store_images on (a sample greyscale and blurred until revealed, audited).

One browser for the module; users take turns in it (each logs in with its own session). Screenshots go to a
folder under the test's tmp_path (the path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from monitor.evidence.signing import generate_signing_key
from test_streams.infra import Mosquitto, NginxRtmp, ffmpeg_publish_cmd, wait_port
from tests.conftest import REPO, MonitorProcess

pytestmark = [pytest.mark.realinfra, pytest.mark.slow]

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "a long enough password"
USERS = {"alice": "moderator", "bob": "moderator", "victor": "viewer", "lena": "lead"}
LATENCY_TARGET_S = 1.0

try:
    from selenium import webdriver
except ImportError:  # the dev extra is not installed
    if os.environ.get("CI"):
        raise
    pytest.skip("needs selenium (the dev extra)", allow_module_level=True)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    if missing:
        msg = f"needs Debian packages chromium and chromium-driver (missing {' '.join(missing)}; scripts/test)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    _need_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)  # no selenium-manager download
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AlertClock:
    """When each incident's first alert reached the broker (a subscriber's receive time)."""

    def __init__(self, port: int, topic: str) -> None:
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"alert-clock-{time.time_ns()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        incident_id = json.loads(msg.payload).get("incident_id")
        with self._lock:
            self.first.setdefault(str(incident_id), now)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait(driver: WebDriver, cond: Callable[[WebDriver], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.02).until(cond, message=what)


def _status(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "status").text)


def _login(driver: WebDriver, base: str, user: str, password: str = PASSWORD) -> None:
    driver.delete_all_cookies()
    driver.get(base)
    _wait(driver, lambda d: d.find_element(By.ID, "login-user").is_displayed(), what="login form")
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password + "\n")


def _logged_in(driver: WebDriver, user: str) -> None:
    _wait(driver, lambda d: user in d.find_element(By.ID, "whoami").text, what=f"{user} logged in")
    _wait(driver, lambda d: "Connected" in _status(d), what="queue connected")


def _keys(driver: WebDriver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _shot(driver: WebDriver, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))


def _fetch(driver: WebDriver, method: str, path: str, csrf: bool) -> int:
    script = """const [m, p, csrf, done] = arguments;
      const h = {"Content-Type": "application/json"};
      if (csrf) h["X-CSRF-Token"] = window.__console.me.csrf;
      fetch(p, {method: m, headers: h, body: m === "GET" ? undefined : "{}"}).then(r => done(r.status));"""
    return int(driver.execute_async_script(script, method, path, csrf))


def test_web_console_end_to_end(browser: WebDriver, mosquitto: Mosquitto, nginx_rtmp: NginxRtmp,
                                known_pngs: list[Path], bank_csv: Path, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots in {shots}")
    state = tmp_path / "state"
    (tmp_path / "keys").mkdir()
    key, pub, _ = generate_signing_key(tmp_path / "keys" / "web.key")  # outside the state directory
    web_port = _free_port()
    config = {
        "node": "web-e2e", "state_dir": str(state),
        "broker": {"url": mosquitto.url, "topic_prefix": "test"},
        "streams": [{"id": "known-rtmp", "url": nginx_rtmp.rtmp_url("known")}],
        "banks": [{"name": "known", "path": str(bank_csv)}],
        "ingest": {"backoff_initial_s": 0.3, "backoff_max_s": 1.0},
        "web": {"port": web_port, "command_key_file": str(key), "trusted_command_keys": [str(pub)],
                "require_signed_commands": True},
    }
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    for name, role in USERS.items():
        r = subprocess.run([sys.executable, "-m", "monitor", "users", "--config", str(cfg_path), "add", name,
                            "--role", role, "--password-file", str(pw_file)], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert oct((state / "web-users.json").stat().st_mode & 0o777) == "0o600"

    logs: dict[str, Path] = {}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as out:
            p = subprocess.Popen([sys.executable, "-m", "monitor", *args, "--config", str(cfg_path)], cwd=REPO,
                                 stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    clock = AlertClock(mosquitto.port, "test/web-e2e/alerts/+")
    web = start("web", "web")
    publisher: subprocess.Popen[bytes] | None = None
    monitor: MonitorProcess | None = None
    try:
        wait_port(web_port, 20, web)
        base = f"http://127.0.0.1:{web_port}/"

        # Refusals first: wrong password, then the moderator's page waiting for incidents.
        _login(browser, base, "alice", "not the password")
        _wait(browser, lambda d: "wrong user name or password" in d.find_element(By.ID, "login-error").text,
              what="wrong password refused")
        _shot(browser, shots, "01-wrong-password")
        _login(browser, base, "alice")
        _logged_in(browser, "alice")
        assert _fetch(browser, "POST", "/api/me/blur", csrf=False) == 403  # CSRF token missing
        assert _fetch(browser, "POST", "/api/logout", csrf=False) == 403

        # A live stream shows the known picture; the incident appears in alice's browser.
        publisher = subprocess.Popen(ffmpeg_publish_cmd(nginx_rtmp.rtmp_url("known"), duration_s=90,
                                                        known_png=known_pngs[1], show=(3.0, 80.0)))
        monitor = MonitorProcess(start("monitor", "run"), logs["monitor"])
        row = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#queue-body tr"), 60,
                    what="incident in the queue")[0]
        incident_id = str(row.get_attribute("data-id"))
        shown_ms = browser.execute_script("return window.__console.shownAt[arguments[0]]", incident_id)
        _wait(browser, lambda d: incident_id in clock.first, 5, what="alert seen at the broker")
        latency_s = shown_ms / 1000.0 - clock.first[incident_id]
        print(f"alert at broker -> shown in the browser: {latency_s * 1000:.0f} ms (target < 1000 ms)")
        assert latency_s < LATENCY_TARGET_S
        _shot(browser, shots, "02-incident-shown")

        # Accessibility: axe-core in the page, no critical violations.
        from axe_selenium_python import Axe

        axe = Axe(browser)
        axe.inject()
        results = axe.run()
        critical = [v["id"] for v in results["violations"] if v.get("impact") == "critical"]
        print(f"axe-core: {len(results['violations'])} violations, critical: {critical}")
        assert critical == []

        # alice claims it and acknowledges it by keyboard.
        browser.find_element(By.ID, "queue").click()
        _keys(browser, "j")
        _wait(browser, lambda d: d.execute_script("return window.__console.selected") == incident_id)
        _keys(browser, "c")
        _wait(browser, lambda d: "Claimed" in _status(d), what="claimed")
        _keys(browser, "a")
        _wait(browser, lambda d: "acknowledged" in d.find_element(By.ID, "queue-body").text, 15,
              what="acknowledged by the monitor")
        _shot(browser, shots, "03-acknowledged")

        # The incident view (Enter on the row): bank entry, distance, history, the evidence chain verified; with
        # evidence.store_images off, hashes and metadata only.
        browser.find_element(By.CSS_SELECTOR, f'#queue-body tr[data-id="{incident_id}"]').click()
        _wait(browser, lambda d: "chain intact" in d.find_element(By.ID, "verification").text, 15,
              what="evidence chain verified in the incident view")
        detail = browser.find_element(By.ID, "detail-body").text
        assert "known / 2 (known-1.png)" in detail and "acknowledge by alice" in detail
        assert browser.find_element(By.ID, "no-images").is_displayed()
        assert browser.find_elements(By.CSS_SELECTOR, "#matches tr"), "no match records in the incident view"
        report = json.loads(browser.execute_async_script(
            "fetch(arguments[0]).then(r => r.text()).then(arguments[1]);", f"/api/incidents/{incident_id}/report.json"))
        files = report["report"]["fileDetails"]
        assert files and files[0]["hash"]["type"] == "pdq" and files[0]["annotations"] == {"liveStreaming": True}
        assert report["report"]["personOrUserReported"]["espIdentifier"] == "known-rtmp"
        assert not browser.find_element(By.ID, "sample").is_displayed()
        results = axe.run()
        critical = [v["id"] for v in results["violations"] if v.get("impact") == "critical"]
        print(f"axe-core with the incident open: {len(results['violations'])} violations, critical: {critical}")
        assert critical == []
        _shot(browser, shots, "03b-incident-view")

        # bob cannot claim it; victor (viewer) cannot act.
        for user, refusal in (("bob", "claimed by alice"), ("victor", "needs the moderator role")):
            _login(browser, base, user)
            _logged_in(browser, user)
            browser.find_element(By.ID, "queue").click()
            _keys(browser, "j")
            _keys(browser, "c")
            _wait(browser, lambda d, r=refusal: r in _status(d), what=f"{user} refused")
            _keys(browser, "a")
            _wait(browser, lambda d, r=refusal: r in _status(d) or "claim it first" in _status(d))
            _shot(browser, shots, f"04-refused-{user}")

        # alice terminates: a permanent ban (terminate.ban, no ban_hours) waits for a lead.
        _login(browser, base, "alice")
        _logged_in(browser, "alice")
        cookie = browser.get_cookie("lsm_session")
        assert cookie is not None and cookie.get("httpOnly") is True and cookie.get("sameSite") == "Strict"
        browser.find_element(By.ID, "queue").click()
        _keys(browser, "j")
        _keys(browser, "t")
        _wait(browser, lambda d: d.find_element(By.ID, "reason-dialog").is_displayed(), what="confirm dialog")
        browser.find_element(By.ID, "reason-text").send_keys("known material on stream")
        browser.find_element(By.ID, "reason-ok").click()
        _wait(browser, lambda d: "waits for approval" in _status(d), what="ban held for approval")
        _shot(browser, shots, "05-waiting-for-approval")
        assert "terminated" not in browser.find_element(By.ID, "queue-body").text

        # An ended session is refused: alice logs out and her old cookie no longer works.
        browser.find_element(By.ID, "logout").click()
        _wait(browser, lambda d: d.find_element(By.ID, "login-user").is_displayed())
        browser.add_cookie({"name": "lsm_session", "value": cookie["value"], "path": "/"})
        browser.get(base)
        assert _fetch(browser, "GET", "/api/me", csrf=False) == 401

        _login(browser, base, "lena")
        _logged_in(browser, "lena")
        approve = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-approval]"), what="approval")
        approve[0].click()
        _wait(browser, lambda d: "Ban approved" in _status(d), what="approved")
        _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'#queue-body tr[data-id="{incident_id}"]'),
              20, what="terminated incident leaves the queue")
        browser.find_element(By.ID, "audit-load").click()
        _wait(browser, lambda d: "ban_approved" in d.find_element(By.ID, "audit-body").text, what="audit page")
        _shot(browser, shots, "06-audit")
    finally:
        clock.stop()
        if publisher is not None:
            publisher.kill()
            publisher.wait(10)
        if monitor is not None:
            monitor.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
        if os.environ.get("WEB_E2E_KEEP"):
            shutil.copytree(tmp_path, os.environ["WEB_E2E_KEEP"], dirs_exist_ok=True)

    # The monitor's evidence names alice, verified, and the lead's approval of the ban.
    conn = sqlite3.connect(f"file:{state / 'evidence.sqlite'}?mode=ro", uri=True)
    actions = [json.loads(b) for (b,) in conn.execute(
        "SELECT body FROM records WHERE kind = 'action' AND incident_id = ? ORDER BY seq", (incident_id,))]
    conn.close()
    monitor_log = logs["monitor"].read_text(errors="replace")
    assert [a["action"] for a in actions] == ["acknowledge", "terminate"], monitor_log
    assert all(a["moderator"] == "alice" and a["verified"] is True for a in actions)
    assert actions[1]["approved_by"] == "lena"
    assert "Traceback" not in monitor_log and "Traceback" not in logs["web"].read_text(errors="replace")


def test_wellness_sample_blurred_until_revealed(browser: WebDriver, mosquitto: Mosquitto, tmp_path: Path) -> None:
    """evidence.store_images on: the page gets the sample greyscale and blurred; the clear one only on reveal,
    and each fetch is an audit note a lead reads."""
    import base64
    import io

    from PIL import Image

    from monitor.contracts.alerts import utc_iso
    from monitor.evidence.store import EvidenceLog
    from tests.unit.test_web_queue import incident

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (220, 20, 20)).save(buf, format="PNG")
    now = time.time()
    with EvidenceLog(state / "evidence.sqlite", store_images=True) as log:
        log.append("match", stream_id="s1", body={"bank": "b1", "entry_id": "e1", "sample_hash": "cd" * 32,
                                                  "image_png_b64": base64.b64encode(buf.getvalue()).decode()})
    inc = incident("i-wellness", utc_iso(now))
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="wellness-publisher")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("test/node-1/incidents/i-wellness", inc.model_dump_json(), qos=1, retain=True).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    port = _free_port()
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(yaml.safe_dump({"state_dir": str(state), "evidence": {"store_images": True},
                                        "broker": {"url": mosquitto.url, "topic_prefix": "test"},
                                        "web": {"port": port}}))
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    for name, role in (("mia", "moderator"), ("lena", "lead")):
        subprocess.run([sys.executable, "-m", "monitor", "users", "--config", str(cfg_path), "add", name, "--role",
                        role, "--password-file", str(pw_file)], cwd=REPO, check=True, capture_output=True, timeout=60)
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as out:
        web = subprocess.Popen([sys.executable, "-m", "monitor", "web", "--config", str(cfg_path)], cwd=REPO,
                               stdout=out, stderr=subprocess.STDOUT)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots in {shots}")
    pixel = """const img = document.getElementById("sample-img");
      const c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
      const g = c.getContext("2d"); g.drawImage(img, 0, 0);
      return Array.from(g.getImageData(32, 32, 1, 1).data).slice(0, 3);"""
    try:
        wait_port(port, 20, web)
        base = f"http://127.0.0.1:{port}/"
        _login(browser, base, "mia")
        _logged_in(browser, "mia")
        row = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#queue-body tr[data-id="i-wellness"]'), 10)
        row[0].click()
        img = _wait(browser, lambda d: d.find_element(By.ID, "sample-img") if d.find_element(
            By.ID, "sample").is_displayed() else None, 10, what="sample shown")
        _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        r, g, b = browser.execute_script(pixel)
        assert r == g == b, (r, g, b)  # greyscale: the red picture is not shown as it is
        assert "revealed=0" in str(img.get_attribute("src"))
        _shot(browser, shots, "01-blurred")
        browser.find_element(By.ID, "reveal").send_keys(" ")  # a keyboard click reveals until the next
        _wait(browser, lambda d: "revealed=1" in str(img.get_attribute("src")), what="revealed")
        _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        _wait(browser, lambda d: tuple(d.execute_script(pixel)) == (220, 20, 20), what="clear picture")
        assert browser.find_element(By.ID, "reveal").get_attribute("aria-pressed") == "true"
        _shot(browser, shots, "02-revealed")
        _login(browser, base, "lena")
        _logged_in(browser, "lena")
        browser.find_element(By.ID, "audit-load").click()
        audit = _wait(browser, lambda d: d.find_element(By.ID, "audit-body").text
                      if "image_view" in d.find_element(By.ID, "audit-body").text else None, what="audit")
        assert audit.count("image_view") >= 2 and "mia" in audit
    finally:
        web.terminate()
        web.wait(20)
    assert "Traceback" not in log_path.read_text(errors="replace")
