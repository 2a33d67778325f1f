"""`monitor eval`: the plan (which picture each stream shows when, under which transform) and the bank of originals."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from monitor.common.errors import UserError
from monitor_tools.eval.live.common import BANK_SIZE, Progress
from test_streams.live import (
    Appearance,
    entry_ids_by_key,
    hash_originals,
    original_file,
    original_key,
    write_bank,
)


@dataclass
class EvalOptions:
    out: Path
    quick: bool = False
    streams: int = 4
    duration_s: float = 300.0
    gop_s: float = 2.0
    fps: int = 25
    width: int = 640
    height: int = 360
    transforms: list[str] = field(default_factory=list)
    images_dir: Path | None = None
    config_path: Path | None = None
    infra: str = "auto"  # auto | real | embedded
    transport: str = "auto"  # auto | rtmp | tcp | hls
    seed: int = 1
    background_samples: int = 3000
    bank_size: int = BANK_SIZE
    nearest_probes: int = 256  # queries scanned fully against the 1M bank, for the distance histogram
    show_s: tuple[float, float] = (5.0, 8.0)
    gap_s: tuple[float, float] = (4.0, 9.0)
    progress: bool = True
    plots: bool = True
    bank_crops: bool = True  # the bank also holds crop windows of each picture (`monitor hash --crops`)


def user_pictures(folder: Path) -> list[Path]:
    from test_streams.live import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no image or video files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    return files


def plan_streams(opts: EvalOptions, lead_in_s: float, pool: Sequence[Path] | None = None,
                 close_after_s: float = 120.0, quarantine_streams: int = 5,
                 quarantine_window_s: float = 300.0) -> tuple[list[list[Appearance]], int]:
    """Appearances per stream (seeded): shows of show_s seconds with gaps of gap_s, starting at random phases of
    the GOP, transforms spread evenly over all shows. Generated pictures are all different; with a pool of one's
    own files, a file is not shown again on a stream before its incident closed (close_after_s), nor on as many
    streams as would quarantine it; a show that cannot be given a file is dropped (counted in the result)."""
    rng = np.random.default_rng([opts.seed, 4242])
    slots: list[tuple[int, float, float]] = []
    for s in range(opts.streams):
        t = lead_in_s + float(rng.uniform(0, opts.gop_s))
        while True:
            length = float(rng.uniform(*opts.show_s))
            if t + length > opts.duration_s - 1.0:
                break
            slots.append((s, round(t, 3), round(t + length, 3)))
            t += length + float(rng.uniform(*opts.gap_s))
    names = list(opts.transforms)
    order = rng.permutation(len(slots))
    transforms = [""] * len(slots)
    for rank, i in enumerate(order):
        transforms[int(i)] = names[rank % len(names)]
    plans: list[list[Appearance]] = [[] for _ in range(opts.streams)]
    dropped = 0
    uses: dict[int, list[tuple[int, float, float]]] = {}  # pool index -> (stream, start, end)
    for k in sorted(range(len(slots)), key=lambda i: slots[i][1]):
        s, start, end = slots[k]
        tseed = 7919 * (k + 1) + opts.seed
        if pool is None:
            plans[s].append(Appearance(1000 + k + 1000 * opts.seed, start, end, transforms[k], tseed))
            continue
        best: int | None = None
        for i in sorted(range(len(pool)), key=lambda i: max((u[2] for u in uses.get(i, [])), default=-1e9)):
            past = uses.get(i, [])
            if any(u[0] == s and start - u[2] < close_after_s + 30 for u in past):
                continue
            recent = {u[0] for u in past if start - u[1] < quarantine_window_s} | {s}
            if len(recent) >= quarantine_streams:
                continue
            best = i
            break
        if best is None:
            dropped += 1
            continue
        uses.setdefault(best, []).append((s, start, end))
        plans[s].append(Appearance(-1, start, end, transforms[k], tseed, str(pool[best])))
    for p in plans:
        p.sort(key=lambda a: a.start_s)
    return plans, dropped


def _render_original(args: tuple[int, str]) -> str:
    seed, folder = args
    return str(original_file(Appearance(seed, 0.0, 1.0), Path(folder)))


@dataclass
class BankBuild:
    path: Path
    plans: list[list[Appearance]]  # with entry ids filled in (and low-quality generated pictures replaced)
    entries: list[dict[str, Any]]
    replaced_low_quality: int  # generated originals re-drawn: PDQ quality under the gate, never matchable
    low_quality_files: list[str]  # files of one's own under the gate (kept: the report names them)


def _render_all(seeds: Sequence[int], folder: Path, bar: Progress, done: int, total: int) -> int:
    workers = max(1, min(4, os.cpu_count() or 1, len(seeds)))
    args = [(s, str(folder)) for s in seeds]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_original, args):
                done += 1
                bar.update(done, f"{done}/{total} pictures")
    else:
        for a in args:
            _render_original(a)
            done += 1
            bar.update(done, f"{done}/{total} pictures")
    return done


def build_bank(plans: Sequence[Sequence[Appearance]], work: Path, progress: bool, min_quality: int = 50,
               attempts: int = 6, crops: bool = True) -> BankBuild:
    """Originals (generated ones as 1280x720 PNGs, as a platform would keep them) hashed into one CSV bank.

    A generated picture whose PDQ quality is under the matcher's gate can never match (the monitor skips such
    hashes): it is replaced by another seed, as the image benchmark does, and counted. Files of one's own are
    kept and named in the report."""
    folder = work / "originals"
    folder.mkdir(parents=True, exist_ok=True)
    current = [list(p) for p in plans]
    rows_by_key: dict[str, list[tuple[str, str, str, int]]] = {}
    replaced = 0
    n_generated = len({a.image for p in current for a in p if a.source is None})
    bar = Progress("originals", max(n_generated, 1), enabled=progress)
    done = 0
    for attempt in range(attempts):
        originals: dict[str, Path] = {}
        to_render: list[int] = []
        for plan in current:
            for a in plan:
                key = original_key(a)
                if key in originals:
                    continue
                originals[key] = Path(a.source) if a.source is not None else folder / f"known-{a.image}.png"
                if a.source is None and not originals[key].exists():
                    to_render.append(a.image)
        done = _render_all(to_render, folder, bar, done, max(n_generated, done + len(to_render)))
        for key, path in originals.items():
            if key not in rows_by_key:
                rows_by_key[key] = hash_originals([(key, path)], crops=crops)
        low = {key for key, rows in rows_by_key.items() if key in originals and key.startswith("known-")
               and max(q for _, _, _, q in rows) < min_quality}
        if not low or attempt == attempts - 1:
            break
        replaced += len(low)
        current = [[replace(a, image=a.image + 100_000) if original_key(a) in low else a for a in plan]
                   for plan in current]
    bar.close(f"{len(originals)} originals" + (f", {replaced} re-drawn (PDQ quality < {min_quality})"
                                                if replaced else ""))
    rows = [r for key in originals for r in rows_by_key[key]]
    bank = work / "bank.csv"
    write_bank(rows, bank)
    ids = entry_ids_by_key(rows)
    entries = [{"entry_id": eid, "label": label, "hash": h, "quality": q} for eid, label, h, q in rows]
    out = [[replace(a, entry_ids=ids.get(original_key(a), ())) for a in plan] for plan in current]
    low_files = sorted(str(originals[k]) for k, rs in rows_by_key.items()
                       if k in originals and not k.startswith("known-") and max(q for *_, q in rs) < min_quality)
    return BankBuild(bank, out, entries, replaced, low_files)
