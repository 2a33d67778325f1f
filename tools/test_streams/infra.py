"""Real helper processes on 127.0.0.1 for tests, benchmarks and evaluation: Mosquitto, nginx-rtmp, ffmpeg.

Each runs on a free loopback port with its files in a private folder and is stopped by its `close()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from test_streams.broker import free_port as free_port  # re-exported: tests and benchmarks take it from here

NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def wait_port(port: int, timeout_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def listening(port: int) -> bool | None:
    """Whether a TCP socket listens on `port`, read from /proc/net/tcp{,6} without connecting (a one-shot
    `?listen=1` server would take a probe connection as its client); None where /proc cannot tell."""
    found_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_any = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False if found_any else None


def wait_listening(port: int, timeout_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until something listens on `port` without connecting to it (see `listening`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        state = listening(port)
        if state is None:  # no /proc: a fixed grace period instead
            time.sleep(1.0)
            return
        if state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def missing_tools() -> list[str]:
    need = {"mosquitto": "mosquitto", "nginx": "nginx", "ffmpeg": "ffmpeg"}
    out = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if not NGINX_RTMP_MODULE.exists():
        out.append("libnginx-mod-rtmp")
    return out


def stop_process(proc: subprocess.Popen[Any] | None, wait_s: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Ask a child to stop (SIGTERM by default), give it `wait_s`, then kill it. Nothing if it is gone already."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _private_dir(prefix: str) -> Path:
    # World-readable: daemons started as root drop to their own user (mosquitto, nginx workers).
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


@dataclass
class Mosquitto:
    """A Mosquitto broker; `extra_conf` adds lines (auth, ACL, TLS listeners)."""

    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    allow_anonymous: bool = True
    persistence: bool = False  # keep sessions and queued QoS 1 messages across restarts
    folder: Path = field(default_factory=lambda: _private_dir("mosq-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        if self.persistence and os.geteuid() == 0:
            # Started as root, Mosquitto drops to the `mosquitto` user, which could not write a root-owned folder:
            # it would log "Permission denied" at shutdown and forget every session (and their queued messages).
            try:
                shutil.chown(self.folder, user="mosquitto")
            except (LookupError, OSError):
                self.folder.chmod(0o777)
        conf = self.folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}\n"
            + (f"persistence true\npersistence_location {self.folder}/\n" if self.persistence
               else "persistence false\n")
            + "log_dest stderr\nlog_type error\nlog_type warning\n" + self.extra_conf
        )
        conf.chmod(0o644)
        self.log = open(self.folder / "mosquitto.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def close(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class NginxRtmp:
    """nginx with the RTMP module: RTMP ingest, HLS out, the control and stat endpoints, optional hooks."""

    rtmp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    app: str = "live"
    hls_fragment_s: int = 2
    notify: str = ""  # extra lines in the application block, e.g. on_publish URLs
    # RTMP chunk size nginx sends with: at the default 4096 a reader makes ~10 poll/recv calls per video packet
    chunk_size: int = 65536
    folder: Path = field(default_factory=lambda: _private_dir("nginx-rtmp-"))
    proc: subprocess.Popen[bytes] | None = None

    def rtmp_url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{self.app}/{name}"

    def hls_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/hls/{name}.m3u8"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> NginxRtmp:
        hls = self.folder / "hls"
        hls.mkdir()
        hls.chmod(0o777)
        (self.folder / "logs").mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.folder / "nginx.conf"
        conf.write_text(f"""
load_module {NGINX_RTMP_MODULE};
{user}daemon off;
master_process on;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/logs/error.log warn;
events {{ worker_connections 1024; }}
rtmp {{
    server {{
        listen 127.0.0.1:{self.rtmp_port};
        chunk_size {self.chunk_size};
        application {self.app} {{
            live on;
            record off;
            hls on;
            hls_path {hls};
            hls_fragment {self.hls_fragment_s}s;
            hls_playlist_length {self.hls_fragment_s * 5}s;
            {self.notify}
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {self.folder}/body;
    proxy_temp_path {self.folder}/proxy;
    fastcgi_temp_path {self.folder}/fastcgi;
    uwsgi_temp_path {self.folder}/uwsgi;
    scgi_temp_path {self.folder}/scgi;
    server {{
        listen 127.0.0.1:{self.http_port};
        location /hls {{
            types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
            alias {hls};
            add_header Cache-Control no-cache;
        }}
        location /control {{ rtmp_control all; }}
        location /stat {{ rtmp_stat all; }}
    }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(self.folder), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.rtmp_port, proc=self.proc)
        wait_port(self.http_port, proc=self.proc)
        return self

    def close(self) -> None:
        stop_process(self.proc, sig=signal.SIGQUIT)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def ffmpeg_publish_cmd(url: str, *, duration_s: float, known_png: Path | None = None,
                       show: tuple[float, float] | None = None, size: str = "640x360", fps: int = 30,
                       gop_s: float = 2.0, source: str | None = None) -> list[str]:
    """ffmpeg pushing a live FLV stream: a moving test pattern, with `known_png` full-frame during `show`."""
    gop = str(round(fps * gop_s))
    w, h = size.split("x")
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
    if source is not None:  # a prepared file, copied (publishers cost little)
        return [*cmd, "-re", "-stream_loop", "-1", "-i", source, "-t", str(duration_s), "-c", "copy", "-f", "flv", url]
    cmd += ["-re", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if known_png is not None and show is not None:
        cmd += ["-re", "-loop", "1", "-framerate", str(fps), "-i", str(known_png)]
        graph = (f"[1:v]scale={w}:{h},format=yuv420p[k];"
                 f"[0:v][k]overlay=enable='between(t,{show[0]},{show[1]})':shortest=1[v]")
        cmd += ["-filter_complex", graph, "-map", "[v]"]
    cmd += ["-t", str(duration_s), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
            "-pix_fmt", "yuv420p", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-bf", "0",
            "-f", "flv", url]
    return cmd
