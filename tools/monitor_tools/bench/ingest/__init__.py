"""Benchmark: ingest cost offline (keyframe path vs full decode) and the real engine live over nginx-rtmp.

    monitor bench ingest [--quick] [--streams N] [--seconds S] [--keyframes-monitor]   (python -m
    monitor_tools.bench.ingest)

1. Offline throughput, in process CPU seconds, on a prepared 720p30 H.264 file with a 2 s GOP (cached in a
   temp folder): (a) `KeyframeReader` (keyframe-only decode, drain, scale in libswscale) + `KnownContentMatcher`
   as built by default (PDQ probes looked up in a 100k-entry bank: random codes plus some of the file's own
   keyframe hashes, so matches happen) + `build_alert` for every match; (b) the same input decoded in full
   (`container.decode`, every frame) with a frame-interval sampler taking one frame per 2 s of media time, then
   the same scale + matcher + alerts. Both with one decoder thread. Reported as media-seconds per CPU-second and
   their ratio, for the default matcher and a single-probe matcher; a per-stage breakdown says where (a) goes.
2. Live, the real engine: Mosquitto, nginx-rtmp and N `ffmpeg -re -stream_loop -1 -c copy` publishers of a
   prepared textured slow pan (720p30, 2 s GOP, 2.5 Mbit/s: camera-like, not testsrc2, which decodes almost for
   free), watched by `monitor run` (a real YAML config: default ingest, sampling and matching, its own worker
   processes; a 100k-entry bank holding one keyframe of the clip, so each stream alerts once per loop) and, in
   the same run on the same streams, by the floor: one process, one thread per stream, receiving every packet and
   decoding the keyframes, nothing else. Optionally also a `sampling.mode: keyframes` monitor
   (`--keyframes-monitor`) and the monitor of another checkout (`--compare-tree`, before/after in one run).
   Reported for each: CPU seconds per media second per stream of the whole process tree (/proc/<pid>/stat of it
   and its children), the ratios engine/floor and adaptive/keyframes, RSS of the tree (idle, at N, per stream),
   sample lag p50/p95/p99 (the engine's own histogram), keyframe packet read to alert arrival at an MQTT
   subscriber p50/p95/p99 (the alerts' `received_at`), keyframes and samples in the window, dropped samples and
   reconnects (the engine's metrics), and the CPU of nginx, the publishers and the machine.

One JSON document goes to stdout; progress goes to stderr. --quick (CI) takes about two minutes and never fails
on a slow machine: it only prints figures. Every process started here is stopped, also on errors and Ctrl-C.

Modules: inputs (settings, prepared files, banks), offline (part 1), live (part 2), floor (the floor process),
metrics (a monitor's metrics and alerts), cli (options, targets, the report).
"""
