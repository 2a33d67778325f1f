"""The image benchmark's stream mode: a layout held fixed over several samples whose content changes, the known
picture last, the samples seen in order by the matcher's per-stream layout model (pipelines/layout.py).

A live stream gives several samples of one layout: a re-streamer's window, webcam inset, chat column or band stays
where it is while the material plays. Per (split, picture, layout transform): one parameter draw (its own seed,
`draw_seed(split, picture + "#stream", transform)`), applied with the same decoration pool to CONTENT_SAMPLES other
natural pictures of the same split and then to the picture itself; each sample JPEG q80 and scaled as ingest does.
The last sample's distance to its own picture is the minimum over the default probes plus the layout probes
(`layout_probes`) of the model that has seen the sequence; unrelated: the nearest other bank entry, leaving out
the content pictures and the decorations drawn in (true matches, not false ones). Every sample's probes, layout
ones included, also go to the false-alert scan against the 1M bank (monitor_tools/eval/images/splits.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor_tools.eval.images.corpus import (
    MIN_QUALITY,
    NO_MATCH,
    Codes,
    Image,
    apply_transform,
    ingest_scale,
    say,
)
from monitor_tools.eval.images.scoring import recall
from monitor_tools.scans import distances
from pipelines.fingerprint import PDQ_DEFAULT_THRESHOLD
from pipelines.hamming import CODE_BYTES
from pipelines.layout import LayoutModel
from pipelines.robust import RobustOptions, compute_probes, layout_probes
from test_streams.transforms import jpeg

# The layouts that stay put while the content changes (the others move or change with the picture).
STREAM_TRANSFORMS = ("window", "band", "webcam", "chat", "logo", "pip30_60", "pip25_30", "combo2")
CONTENT_SAMPLES = 5  # other pictures shown in the layout before the known one


def _codes(sample: Image, model: LayoutModel) -> Codes:
    """The sample's usable default probes and, once the model has seen it, its layout probes."""
    probes = compute_probes(sample, RobustOptions())
    model.update(sample)
    found = model.layout()
    if found is not None:
        probes += layout_probes(sample, found)
    codes = [p.codes["pdq"] for p in probes if p.quality >= MIN_QUALITY]
    return np.stack(codes) if codes else np.zeros((0, CODE_BYTES), np.uint8)


def score_streams(split_name: str, names: list[str], originals: list[Image], bank: Codes,
                  transforms: Sequence[str] = STREAM_TRANSFORMS) -> tuple[dict[str, Any], list[Codes]]:
    """Recall at 31 per layout transform in stream mode (natural pictures only: `originals` are the split's
    natural pictures, `bank` their codes in the same order), with and without the layout probes; and every sample's
    codes for the false-alert scan."""
    from test_streams.natural import draw_seed

    n = len(originals)
    all_codes: list[Codes] = []
    per: dict[str, Any] = {}
    for ti, tr in enumerate(transforms):
        say(f"{split_name}, stream mode: {tr} ({ti + 1}/{len(transforms)})")
        pos, pos_plain, neg, found = [], [], [], 0
        for i in range(n):
            content = [(i + 1 + 7 * k) % n for k in range(CONTENT_SAMPLES)]
            pool_rows = [r for r in range(n) if r != i and r not in content]
            pool = _Pool([originals[r] for r in pool_rows], pool_rows)
            seed = draw_seed(split_name, f"{names[i]}#stream", tr)
            model = LayoutModel()
            for j in [*content, i]:
                sample = ingest_scale(jpeg(apply_transform(tr, originals[j], seed, pool), 80))
                codes = _codes(sample, model)
                all_codes.append(codes)
            found += model.layout() is not None
            plain = [p.codes["pdq"] for p in compute_probes(sample, RobustOptions()) if p.quality >= MIN_QUALITY]
            row = distances(codes, bank).min(axis=0) if len(codes) else np.full(n, NO_MATCH)
            pos.append(int(row[i]))
            pos_plain.append(int(distances(np.stack(plain), bank).min(axis=0)[i]) if plain else NO_MATCH)
            excluded = np.zeros(n, bool)
            excluded[[i, *content, *pool.used]] = True
            neg.append(int(np.where(excluded, NO_MATCH, row).min()))
        per[tr] = {"recall_at_31": recall(np.array(pos), PDQ_DEFAULT_THRESHOLD),
                   "recall_at_31_without_layout": recall(np.array(pos_plain), PDQ_DEFAULT_THRESHOLD),
                   "median_distance": float(np.median(pos)), "layout_found": found / max(1, n),
                   "false_matches_at_31": int((np.array(neg) <= PDQ_DEFAULT_THRESHOLD).sum()),
                   "min_unrelated_distance": int(min(neg)) if neg else None, "sequences": n}
    return {"content_samples": CONTENT_SAMPLES, "transforms": per}, all_codes


class _Pool(Sequence[Image]):
    """A decoration pool that remembers which rows of the bank a transform drew from it."""

    def __init__(self, images: list[Image], rows: list[int]) -> None:
        self._images, self._rows = images, rows
        self.used: set[int] = set()

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Image:  # type: ignore[override]
        self.used.add(self._rows[i])
        return self._images[i]
