"""`monitor eval`: the whole monitor against live test streams with ground truth, scored per transform.

    python -m monitor_tools.eval.live --out eval-out            # full: 4 streams x 5 min, every transform
    python -m monitor_tools.eval.live --quick --out eval-quick  # CI: 2 streams x 50 s, a few transforms

Several PyAV generators (test_streams.live, subprocesses) stream scene-cut backgrounds (test_streams.scenes) and
show known pictures at scheduled times, each under one named transform (test_streams.transforms); the monitor
pulls them, matches against a bank of the ORIGINAL pictures, and publishes alerts over MQTT; a separate subscriber
(paho, its own thread) records each alert and the wall time it arrived. With Mosquitto, nginx-rtmp and ffmpeg
installed (`test_streams.infra.missing_tools()` empty) the parts are real: Mosquitto, RTMP pushed into nginx-rtmp
and the monitor as its own process (`python -m monitor run`); otherwise embedded: amqtt in this process, the
Engine in this process, MPEG-TS over tcp (or HLS from a small HTTP server), as `monitor demo` does.

Scoring. An appearance is detected when an alert for its stream and one of its bank entries has `media_time_s`
within [start, end + one GOP]; an alert matching no appearance is a false alert. Latency from first appearance is
alert received (subscriber wall time) - the wall time the appearance's first frame was sent; from the keyframe,
alert received - the alert's `received_at` (when the monitor read the keyframe's packet). Afterwards the eval
encodes every stream again from its ground truth (x264 is deterministic), reads its keyframes with the monitor's
KeyframeReader and hashes them with the matcher's probes: the distance of each appearance to its own entry
(matches; checked against the distances in the alerts) and of every background keyframe to the bank
(non-matches). The false-alert estimate at 1M entries matches a few thousand background keyframes (the streamed
ones, and more through an H.264 intra round trip, across every kind of scene) against 1M uniform random PDQ codes
plus the known pictures.

Writes `report.md`, `results.json` and PNG plots into --out; the generators' plans, ground truths, the bank and
the logs into --out/work. Progress on stderr.

Modules: common (targets, statistics, progress), plan (appearances, bank), run (the live run), score, offline
(re-hash and the 1M estimate), report (targets, plots, report.md), cli (options, the whole run, exit code).
"""
