"""`monitor bench ingest`, part 1: offline throughput of the keyframe path against a full decode, in process CPU
seconds, and where the keyframe path's time goes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import av.error
from av.video.reformatter import VideoReformatter

from monitor.config.models import IngestConfig, MatchingConfig
from monitor.contracts.alerts import build_alert
from monitor.ingest.reader import KeyframeReader, scaled_rgb
from monitor.runtime.analyses import make_matcher
from monitor_tools.bench.ingest.inputs import SAMPLE_EVERY_S, media_duration, say
from pipelines.banks import Bank
from pipelines.base import Finding, Sample
from pipelines.fingerprint import pdq
from pipelines.known_content import KnownContentMatcher
from pipelines.robust import SWITCH_NAMES


@dataclass
class AlertBook:
    """Alert bookkeeping, worst case: the alert dict is built for every match (no cooldown, no incidents)."""

    alerts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, findings: list[Finding]) -> None:
        now = time.time()
        built = [build_alert(f, node="bench", stream_url="bench://", observed_at=now) for f in findings]
        with self.lock:
            self.alerts += len(built)


def run_keyframe_path(path: Path, cfg: IngestConfig, matcher: KnownContentMatcher) -> dict[str, Any]:
    book = AlertBook()
    samples = matches = 0
    for f in KeyframeReader(str(path), cfg, threading.Event()).frames():
        findings = matcher.process(Sample("bench", f.media_time_s, f.received_at, f.rgb))
        samples += 1
        matches += len(findings)
        book.add(findings)
    return {"samples": samples, "matches": matches, "alerts": book.alerts}


def run_full_decode_path(path: Path, cfg: IngestConfig, matcher: KnownContentMatcher) -> dict[str, Any]:
    """What a frame-interval sampler on full decoding does: decode every frame, keep one per 2 s of media time."""
    book = AlertBook()
    samples = matches = decoded = 0
    next_t: float | None = None
    fmt = VideoReformatter()  # one per stream, as the reader's
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.codec_context.thread_count = cfg.decoder_threads
        tb = video.time_base
        for frame in container.decode(video):
            decoded += 1
            if frame.pts is None or tb is None:
                continue
            t = float(frame.pts * tb)
            if next_t is not None and t < next_t:
                continue
            next_t = (t if next_t is None else next_t) + SAMPLE_EVERY_S
            rgb = scaled_rgb(frame, cfg.scale_width, fmt)
            findings = matcher.process(Sample("bench", t, time.time(), rgb))
            samples += 1
            matches += len(findings)
            book.add(findings)
    return {"samples": samples, "matches": matches, "alerts": book.alerts, "frames_decoded": decoded}


def stage_breakdown(path: Path, cfg: IngestConfig, bank: Bank) -> dict[str, float]:
    """CPU ms per keyframe by stage, with the reader's decode (drain + flush) replicated so stages can be timed."""
    cpu = time.process_time
    totals = {"demux_and_decode": 0.0, "scale_to_rgb": 0.0, "pdq": 0.0, "bank_lookup": 0.0}
    n = 0
    fmt = VideoReformatter()
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        ctx = video.codec_context
        ctx.skip_frame = "NONKEY"
        ctx.thread_count = cfg.decoder_threads
        t = cpu()
        for packet in container.demux(video):
            if packet.dts is None or not packet.is_keyframe:
                continue
            frames = list(ctx.decode(packet)) + list(ctx.decode(None))
            ctx.flush_buffers()
            t1 = cpu()
            totals["demux_and_decode"] += t1 - t
            for frame in frames:
                rgb = scaled_rgb(frame, cfg.scale_width, fmt)
                t2 = cpu()
                code, _ = pdq(rgb)
                t3 = cpu()
                bank.lookup(code)
                t4 = cpu()
                totals["scale_to_rgb"] += t2 - t1
                totals["pdq"] += t3 - t2
                totals["bank_lookup"] += t4 - t3
                n += 1
                t1 = t4
            t = cpu()
    return {f"{k}_ms_per_keyframe": round(v / max(1, n) * 1e3, 3) for k, v in totals.items()}


def bench_matcher(bank: Bank, single_probe: bool = False) -> KnownContentMatcher:
    """The matcher as the engine builds it from the default `matching:` section, or with every robustness switch off
    (one probe: no probe switch, no per-stream layout views)."""
    off = MatchingConfig(**dict.fromkeys(SWITCH_NAMES, False), layout=False)
    matching = off if single_probe else MatchingConfig()
    return make_matcher([bank], matching)


def describe_matcher(matcher: KnownContentMatcher) -> dict[str, Any]:
    options = getattr(matcher, "options", None)
    label = options.label() if options is not None and hasattr(options, "label") else "single PDQ probe"
    stats = matcher.stats
    probes = getattr(stats, "probes", None)
    return {"options": label,
            "lookups_per_sample": round(probes / stats.samples, 2) if probes is not None and stats.samples else 1.0}


def _compare(path: Path, media_s: float, cfg: IngestConfig, bank: Bank, min_cpu_s: float,
             single_probe: bool) -> dict[str, Any]:
    matcher = bench_matcher(bank, single_probe)
    run_keyframe_path(path, cfg, matcher)  # warm caches (file pages, code paths); not counted
    # (a) repeated until it has used enough CPU to be measured well
    reps, cpu_a, wall_a = 0, 0.0, 0.0
    res_a: dict[str, Any] = {}
    while reps < 1 or (cpu_a < min_cpu_s and reps < 50):
        c0, w0 = time.process_time(), time.perf_counter()
        res_a = run_keyframe_path(path, cfg, matcher)
        cpu_a += time.process_time() - c0
        wall_a += time.perf_counter() - w0
        reps += 1
    what = "single-probe matcher" if single_probe else "default matcher"
    say(f"  keyframe path, {what}: {reps} x {media_s:.0f} media-s in {cpu_a:.2f} CPU-s")
    c0, w0 = time.process_time(), time.perf_counter()
    res_b = run_full_decode_path(path, cfg, matcher)
    cpu_b, wall_b = time.process_time() - c0, time.perf_counter() - w0
    say(f"  full decode, {what}: {media_s:.0f} media-s in {cpu_b:.2f} CPU-s")
    a = media_s * reps / cpu_a
    b = media_s / cpu_b
    return {
        "matcher": describe_matcher(matcher),
        "keyframe_path": {
            "what": "KeyframeReader (keyframe-only, drain, libswscale scale) + KnownContentMatcher + build_alert",
            "repeats": reps,
            "cpu_s": round(cpu_a, 3),
            "wall_s": round(wall_a, 3),
            "media_s_per_cpu_s": round(a, 1),
            "samples_per_run": res_a["samples"],
            "matches_per_run": res_a["matches"],
            "alerts_per_run": res_a["alerts"],
        },
        "full_decode_path": {
            "what": f"container.decode (every frame) + one sample per {SAMPLE_EVERY_S:g} s of media time + same",
            "cpu_s": round(cpu_b, 3),
            "wall_s": round(wall_b, 3),
            "media_s_per_cpu_s": round(b, 1),
            "frames_decoded": res_b["frames_decoded"],
            "samples": res_b["samples"],
            "matches": res_b["matches"],
            "alerts": res_b["alerts"],
        },
        "ratio": round(a / b, 2),
    }


def bench_throughput(path: Path, cfg: IngestConfig, bank: Bank, planted: int, min_cpu_s: float) -> dict[str, Any]:
    """The default matcher (what `monitor run` uses) and, for comparison, the matcher with one PDQ probe."""
    media_s = media_duration(path)
    default = _compare(path, media_s, cfg, bank, min_cpu_s, single_probe=False)
    single = _compare(path, media_s, cfg, bank, min_cpu_s / 2, single_probe=True)
    return {
        "input": {"file": path.name, "media_s": round(media_s, 2), "size_mb": round(path.stat().st_size / 1e6, 2)},
        "bank_entries": len(bank),
        "bank_planted_keyframe_hashes": planted,
        **default,
        "single_probe": single,
        "keyframe_path_stages": stage_breakdown(path, cfg, bank),
        "keyframe_path_stages_note": "one PDQ probe, timed stage by stage (the default matcher adds lookups)",
    }
