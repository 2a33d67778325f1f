"""`monitor bench ingest`: the floor, the least any live keyframe monitor must do, run as its own process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading

import av
import av.error

from monitor_tools import TOOLS_ROOT
from monitor_tools.bench.harness import die_with_parent
from test_streams.infra import stop_process


def floor_main() -> int:
    """The floor (`--floor-child`): the least any live keyframe monitor must do. One process, one thread per
    stream: receive and demux every packet, decode each keyframe (drained out of the decoder at once, as the
    monitor does), nothing else: no scaling, hashing, timeouts or Python per packet beyond the loop. Streams on
    stdin (one JSON line), keyframe counts on stdout when stdin closes."""
    urls: list[tuple[str, str]] = json.loads(sys.stdin.readline())["streams"]
    stop = threading.Event()
    counts = dict.fromkeys((sid for sid, _ in urls), 0)

    def read(sid: str, url: str) -> None:
        while not stop.is_set():
            try:
                with av.open(url, options={"probesize": "65536", "analyzeduration": "1000000",
                                           "rw_timeout": "5000000"}) as c:
                    video = c.streams.video[0]
                    ctx = video.codec_context
                    ctx.thread_count = 1
                    for packet in c.demux():
                        if stop.is_set():
                            return
                        if packet.stream is not video or not packet.is_keyframe:
                            continue
                        frames = list(ctx.decode(packet))
                        with contextlib.suppress(av.error.EOFError):
                            frames += ctx.decode(None)
                        ctx.flush_buffers()
                        counts[sid] += len(frames)
            except Exception:  # reconnect, as a monitor would
                stop.wait(0.5)

    threads = [threading.Thread(target=read, args=u, daemon=True) for u in urls]
    for t in threads:
        t.start()
    sys.stdin.readline()  # EOF or a line: stop
    stop.set()
    print(json.dumps({"keyframes": counts}), flush=True)
    return 0


def start_floor(urls: list[tuple[str, str]]) -> subprocess.Popen[str]:
    root = TOOLS_ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "monitor_tools.bench.ingest", "--floor-child"], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"streams": urls}) + "\n")
    proc.stdin.flush()
    return proc


def finish_floor(proc: subprocess.Popen[str]) -> dict[str, int]:
    try:
        out, _ = proc.communicate("stop\n", timeout=30)
        result: dict[str, int] = json.loads(out)["keyframes"]
        return result
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        return {}
    finally:
        stop_process(proc, 5)
