"""Bank-side crop windows (`monitor hash --crops`): a picture shown cropped is found only through them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from monitor.cli.main import main
from monitor.ingest.reader import scaled_rgb
from pipelines.banks import load_bank
from pipelines.base import Sample
from pipelines.known_content import KnownContentMatcher
from pipelines.robust import BANK_CROP_GRIDS
from test_streams import transforms as tf
from test_streams.images import known_image


def _sample(rgb: np.ndarray) -> Sample:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return Sample("s1", 10.0, 0.0, scaled_rgb(frame, 512))


def test_hash_crops_writes_windows_under_the_pictures_id_and_finds_cropped_pictures(tmp_path: Path) -> None:
    pictures = [known_image(seed, 640, 360) for seed in (3, 4, 5, 6)]
    files = []
    for k, img in enumerate(pictures):
        files.append(tmp_path / f"p{k}.png")
        Image.fromarray(img).save(files[-1])
    plain, crops = tmp_path / "plain.csv", tmp_path / "crops.csv"
    assert main(["hash", *map(str, files), "-o", str(plain)]) == 0
    assert main(["hash", "--crops", *map(str, files), "-o", str(crops)]) == 0
    bank_plain, bank_crops = load_bank(plain, "plain"), load_bank(crops, "crops")
    windows = sum(n * n for _, n in BANK_CROP_GRIDS)
    assert len(bank_plain) == len(pictures)
    assert len(pictures) < len(bank_crops) <= len(pictures) * (1 + windows)
    assert {e.entry_id for e in bank_crops.entries} == {e.entry_id for e in bank_plain.entries}
    assert all(t.startswith("variant:crop") for e in bank_crops.entries for t in e.tags)

    found_plain = found_crops = 0
    for k, img in enumerate(pictures):
        for seed in range(3):
            shown = tf.jpeg(tf.crop10(img, 100 * k + seed), 80)
            ids_plain = {f.entry_id for f in KnownContentMatcher([bank_plain]).process(_sample(shown))}
            ids_crops = {f.entry_id for f in KnownContentMatcher([bank_crops]).process(_sample(shown))}
            assert ids_crops <= {str(k + 1)}  # never another picture
            found_plain += str(k + 1) in ids_plain
            found_crops += str(k + 1) in ids_crops
    # 12 cropped showings: the plain bank finds (almost) none, the windows most (offline figure: 79%)
    assert found_plain <= 2
    assert found_crops >= 7, found_crops
