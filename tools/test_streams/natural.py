"""A corpus of natural, freely licensed pictures for the image benchmark, from installed packages only.

The pictures come from Debian wallpaper packages (found through `dpkg-query -L`, so only files the package itself
installed) and from images bundled inside PyPI wheels (scikit-image's `skimage/data`, matplotlib's sample data).
Nothing is downloaded: a package that is not installed contributes nothing, and `corpus_report()` says which were
missing. Licences per package are in `SOURCES` and docs/natural-corpus.md (from each package's copyright file).

Each picture is decoded, cut to 16:9 around its centre (streams are 16:9), scaled to the working size
(`WORK_WIDTH` x `WORK_HEIGHT`, area averaging), kept only when its PDQ quality is at least `MIN_QUALITY`, and
de-duplicated: a picture within `DEDUP_DISTANCE` bits of one already kept, in any of PDQ's 8 rotations and mirrors,
is dropped (wallpapers ship one picture at several resolutions, and light/dark variants of one design). The result
is cached as one .npz under `out/cache/natural/` (or `$MONITOR_NATURAL_CACHE`; `off` disables it), keyed by the
files' paths, sizes and modification times and this module's `LOADER_VERSION`.

`split()` sets aside a fixed share of the pictures (`HOLDOUT_FRACTION`) by a fixed seed as the held-out split,
ordered by a keyed hash of each picture's name: adding a package moves few pictures between splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image as PILImage

from pipelines.fingerprint import pdq, pdq_dihedral
from pipelines.hamming import CODE_BYTES, hamming

Image = npt.NDArray[np.uint8]

WORK_WIDTH, WORK_HEIGHT = 640, 360
MIN_QUALITY = 50
DEDUP_DISTANCE = 70  # bits: closer pictures are one picture (resolutions, light/dark variants of one design)
HOLDOUT_FRACTION = 0.30
HOLDOUT_SEED = 13  # fixed: changing it re-draws the held-out split, which then has to be treated as seen
LOADER_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Files of the wallpaper packages that are not pictures to show: previews, UI parts, logos, boot splashes.
EXCLUDE_PARTS = ("screenshot", "preview", "/icons/", "/pixmaps/", "grub", "plymouth", "logo", "emblem", "/login",
                 "/doc/", "lockscreen", "/sddm", "portrait")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Source:
    """A package the corpus draws on. `licence` summarises the package's copyright file (docs/natural-corpus.md)."""

    package: str
    kind: str  # "deb" or "pypi"
    licence: str
    note: str = ""
    only: str = ""  # a regular expression a file's path must match ("": every picture file not in EXCLUDE_PARTS)
    min_bytes: int = 0  # smaller files are left out (thumbnails, icons, faint astrophotographs)
    every: int = 1  # keep every n-th of the matching files (in path order): caps a large uniform set


# Photographs among OpenCV's sample data (one of each stereo or viewpoint pair; no logos, charts, masks or text).
OPENCV_FILES = ("aero1", "aloeL", "apple", "baboon", "basketball1", "board", "box_in_scene", "building", "butterfly",
                "chicky_512", "ela_original", "fruits", "graf1", "HappyFish", "home", "leuvenA", "left01",
                "licenseplate_motion", "messi5", "orange", "rubberwhale1", "smarties", "squirrel_cls",
                "starry_night", "stuff", "sudoku", "Blender_Suzanne1", "pca_test1")
# Checked and left out: opencv-data (Debian's has only cascade files, no pictures), desktop-base, sway-backgrounds
# and xfdesktop4-data (their pictures are flat gradients and logos under the PDQ quality gate, or duplicates).
DEB_PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers-16.04",
                "lomiri-wallpapers-20.04", "gnome-backgrounds", "opencv-doc", "stellarium-data")
SOURCES: tuple[Source, ...] = (
    Source("plasma-workspace-wallpapers", "deb", "GPL-2+ (KDE Visual Design Group)",
           "KDE Plasma wallpapers: photographs and digital art"),
    Source("mate-backgrounds", "deb", "GPL-2+ (per-file authors in the copyright file)",
           "MATE backgrounds: nature photographs, abstract art"),
    Source("ukui-wallpapers", "deb", "CC-BY-SA-3.0 (Ubuntu Kylin community contributors)",
           "UKUI wallpapers: photographs and art"),
    Source("lomiri-wallpapers-16.04", "deb", "CC-BY-4.0 / CC-BY-SA-4.0 / CC-BY-SA-3.0 per file (named authors)",
           "Ubuntu Touch 16.04 wallpapers: photographs"),
    Source("lomiri-wallpapers-20.04", "deb", "CC-BY-SA-4.0 / CC-BY-4.0 per file (named authors)",
           "Ubuntu Touch 20.04 wallpapers"),
    Source("gnome-backgrounds", "deb", "CC-BY-SA-3.0 (named authors)", "GNOME backgrounds: art (WebP only)"),
    Source("opencv-doc", "deb", "Apache-2.0 AND BSD-3-Clause (OpenCV; Debian's +dfsg repack drops the Lena files)",
           "OpenCV sample photographs (examples/data)", only=r"/examples/data/(" + "|".join(OPENCV_FILES) + r")\."),
    Source("stellarium-data", "deb", "GPL-2+ (Stellarium authors)", "astrophotographs of nebulae and galaxies",
           only=r"/nebulae/default/", min_bytes=300_000, every=3),
    Source("scikit-image", "pypi", "CC0 / public domain per image (skimage/data; see the skimage.data docstrings)",
           "photographs bundled in the wheel (no download)"),
    Source("matplotlib", "pypi", "public domain (US Navy photograph of Grace Hopper)",
           "mpl-data/sample_data/grace_hopper.jpg"),
)
# Photographs among scikit-image's bundled data whose docstring in skimage.data states CC0 or public domain
# (drawings, charts, test patterns, tiny files and the pictures with no stated licence are left out).
SKIMAGE_FILES = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
                 "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "rocket.jpg",
                 "clock_motion.png")


@dataclass(frozen=True, slots=True)
class Picture:
    """One corpus picture at the working size."""

    name: str  # "<package>/<file stem>", unique in the corpus
    package: str
    path: str  # the file it was read from (inside the package's installed files)
    image: Image
    code: npt.NDArray[np.uint8]  # PDQ of the working-size picture
    quality: int


# -- finding the files ---------------------------------------------------------------------------------------------


def _deb_files(package: str) -> list[str]:
    """The files a Debian package installed ([] when it is not installed or there is no dpkg)."""
    if shutil.which("dpkg-query") is None:
        return []
    try:
        out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line for line in out.stdout.splitlines() if line.lower().endswith(IMAGE_SUFFIXES)]


_SIZE = re.compile(r"(\d+)x(\d+)")


def _pick_resolution(paths: list[str]) -> str:
    """One file of a KDE-style wallpaper folder (`contents/images/<W>x<H>.<ext>`): the landscape size nearest 1920
    wide at or above it, else the widest."""
    def size(p: str) -> tuple[int, int]:
        m = _SIZE.search(Path(p).stem)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    land = [p for p in paths if size(p)[0] >= size(p)[1]] or paths
    big = sorted((p for p in land if size(p)[0] >= 1920), key=lambda p: size(p)[0])
    return big[0] if big else max(land, key=lambda p: size(p)[0])


def deb_candidates(src: Source) -> list[str]:
    """The picture files to read from one Debian package, one per KDE-style wallpaper folder."""
    def wanted(f: str) -> bool:
        if src.only:
            return re.search(src.only, f) is not None
        return not any(x in f.lower() for x in EXCLUDE_PARTS)
    files = sorted(f for f in _deb_files(src.package) if wanted(f) and os.path.isfile(f)
                   and os.path.getsize(f) >= src.min_bytes)[:: src.every]
    groups: dict[str, list[str]] = {}
    singles = []
    for f in files:
        m = re.search(r"^(.*/contents/images[^/]*)/", f)
        if m:
            groups.setdefault(m.group(1), []).append(f)
        else:
            singles.append(f)
    return sorted(singles + [_pick_resolution(g) for g in groups.values()])


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pypi_candidates(package: str) -> list[str]:
    """The bundled picture files of a PyPI package ([] when it is not installed). Found without importing it."""
    if package == "scikit-image":
        base = _package_dir("skimage")
        files = [base / "data" / n for n in SKIMAGE_FILES] if base else []
    elif package == "matplotlib":
        base = _package_dir("matplotlib")
        files = [base / "mpl-data" / "sample_data" / "grace_hopper.jpg"] if base else []
    else:
        files = []
    return [str(f) for f in files if f.is_file()]


def candidates() -> list[tuple[Source, str]]:
    out = []
    for src in SOURCES:
        paths = deb_candidates(src) if src.kind == "deb" else pypi_candidates(src.package)
        out += [(src, p) for p in paths]
    return out


# -- reading ---------------------------------------------------------------------------------------------------


def fit_16_9(rgb: Image, width: int = WORK_WIDTH, height: int = WORK_HEIGHT) -> Image:
    """The largest centred window of the target aspect, scaled to width x height (area averaging)."""
    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:
        cw = round(h * target)
        rgb = rgb[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = round(w / target)
        rgb = rgb[(h - ch) // 2 : (h - ch) // 2 + ch]
    interp = cv2.INTER_AREA if rgb.shape[1] > width else cv2.INTER_CUBIC
    return np.asarray(cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=interp), np.uint8)


def read_picture(path: str, width: int = WORK_WIDTH, height: int = WORK_HEIGHT) -> Image | None:
    """A picture file as RGB at the working size; None when it cannot be read. Transparency is flattened on
    mid-grey; JPEGs are decoded at a reduced scale when they are much larger than needed."""
    try:
        with PILImage.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (2 * width, 2 * height))
            if im.mode in ("RGBA", "LA", "P", "PA"):
                rgba = im.convert("RGBA")
                flat = PILImage.new("RGBA", rgba.size, (128, 128, 128, 255))
                flat.alpha_composite(rgba)
                rgb = np.asarray(flat.convert("RGB"), np.uint8)
            else:
                rgb = np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, ValueError, PILImage.DecompressionBombError):
        return None
    if rgb.shape[0] < 64 or rgb.shape[1] < 64:
        return None
    return fit_16_9(rgb, width, height)


def _name(src: Source, path: str) -> str:
    p = Path(path)
    if "/contents/images" in path:  # KDE layout: the wallpaper's folder names it
        folder = path.split("/contents/images")[0].rsplit("/", 1)[-1]
        dark = "_dark" if "/contents/images_dark/" in path else ""
        return f"{src.package}/{folder}{dark}"
    return f"{src.package}/{p.stem}"


def _dihedral_near(code_set: npt.NDArray[np.uint8], variants: Sequence[npt.NDArray[np.uint8]]) -> int:
    """Smallest distance between any kept code and any of a picture's 8 dihedral codes (257 when none kept)."""
    if not len(code_set):
        return 257
    return min((int(hamming(code_set, v).min()) for v in variants), default=257)


def build(found: Iterable[tuple[Source, str]], dedup_distance: int = DEDUP_DISTANCE) -> tuple[list[Picture],
                                                                                                dict[str, int]]:
    """Read, gate and de-duplicate; the counts say what was dropped and why."""
    kept: list[Picture] = []
    codes = np.zeros((0, CODE_BYTES), np.uint8)
    counts = {"files": 0, "unreadable": 0, "low_quality": 0, "duplicates": 0}
    names: set[str] = set()
    for src, path in found:
        counts["files"] += 1
        img = read_picture(path)
        if img is None:
            counts["unreadable"] += 1
            continue
        code, quality = pdq(img)
        if quality < MIN_QUALITY:
            counts["low_quality"] += 1
            continue
        variants, _ = pdq_dihedral(img)
        if _dihedral_near(codes, variants) <= dedup_distance:
            counts["duplicates"] += 1
            continue
        name = _name(src, path)
        while name in names:
            name += "+"
        names.add(name)
        kept.append(Picture(name, src.package, path, img, code, quality))
        codes = np.vstack([codes, code[None]])
    return kept, counts


# -- cache -----------------------------------------------------------------------------------------------------


def _cache_dir() -> Path | None:
    env = os.environ.get("MONITOR_NATURAL_CACHE")
    if env == "off":
        return None
    return Path(env) if env else ROOT / "out" / "cache" / "natural"


def _key(found: Sequence[tuple[Source, str]]) -> str:
    h = hashlib.sha256(f"v{LOADER_VERSION} {WORK_WIDTH}x{WORK_HEIGHT} q{MIN_QUALITY} d{DEDUP_DISTANCE}".encode())
    for src, path in found:
        st = os.stat(path)
        h.update(f"\n{src.package} {path} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Corpus:
    pictures: tuple[Picture, ...]
    counts: dict[str, int]
    packages: dict[str, int]  # package -> pictures kept (0: installed but nothing kept; missing: not installed)
    missing: tuple[str, ...]  # packages of SOURCES that gave no file (not installed)
    cached: bool


def _save(path: Path, pics: list[Picture], counts: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"counts": counts, "pictures": [{"name": p.name, "package": p.package, "path": p.path,
                                            "quality": p.quality} for p in pics]}
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.stack([p.image for p in pics]) if pics else np.zeros((0, 1, 1, 3), np.uint8),
                        codes=np.stack([p.code for p in pics]) if pics else np.zeros((0, CODE_BYTES), np.uint8),
                        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _load(path: Path) -> tuple[list[Picture], dict[str, int]] | None:
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            images, codes = z["images"], z["codes"]
    except (OSError, ValueError, KeyError):
        return None
    pics = [Picture(m["name"], m["package"], m["path"], np.ascontiguousarray(images[i]), codes[i], int(m["quality"]))
            for i, m in enumerate(meta["pictures"])]
    return pics, dict(meta["counts"])


@lru_cache(maxsize=2)
def load_corpus(use_cache: bool = True) -> Corpus:
    """Every corpus picture from the installed packages (cached on disk and in memory)."""
    found = candidates()
    cache = _cache_dir() if use_cache else None
    file = cache / f"natural-{_key(found)}.npz" if cache else None
    loaded = _load(file) if file is not None and file.exists() else None
    cached = loaded is not None
    if loaded is None:
        loaded = build(found)
        if file is not None:
            with contextlib.suppress(OSError):  # an unwritable cache only costs the next run the decoding
                _save(file, *loaded)
    pics, counts = loaded
    present = {src.package for src, _ in found}
    packages = {s.package: sum(p.package == s.package for p in pics) for s in SOURCES if s.package in present}
    missing = tuple(s.package for s in SOURCES if s.package not in present)
    return Corpus(tuple(pics), counts, packages, missing, cached)


# -- splits ----------------------------------------------------------------------------------------------------


def _rank(name: str, seed: int) -> bytes:
    return hashlib.blake2b(name.encode(), key=str(seed).encode(), digest_size=16).digest()


def split(names: Sequence[str], fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> tuple[list[int],
                                                                                                        list[int]]:
    """(tuning, held_out) indexes: the round(fraction * n) names first in keyed-hash order are held out; each
    list keeps the input order."""
    order = sorted(range(len(names)), key=lambda i: _rank(names[i], seed))
    held = set(order[: round(fraction * len(names))])
    return [i for i in range(len(names)) if i not in held], [i for i in range(len(names)) if i in held]


def draw_seed(split_name: str, name: str, transform: str, seed: int = HOLDOUT_SEED) -> int:
    """The parameter draw of one (split, picture, transform) sample: the held-out split's draws come from another
    part of the seed space than the tuning split's, so its parameters were never seen while tuning either."""
    d = hashlib.blake2b(f"{split_name}\0{name}\0{transform}".encode(), key=str(seed).encode(), digest_size=8)
    return int.from_bytes(d.digest(), "big") >> 2


def corpus_report(corpus: Corpus) -> dict[str, object]:
    """What the corpus holds, for the benchmark's JSON."""
    licences = {s.package: s.licence for s in SOURCES}
    return {"pictures": len(corpus.pictures), "packages": corpus.packages, "missing_packages": list(corpus.missing),
            "licences": {p: licences[p] for p in corpus.packages}, "counts": corpus.counts,
            "work_size": [WORK_WIDTH, WORK_HEIGHT], "dedup_distance": DEDUP_DISTANCE, "min_quality": MIN_QUALITY,
            "holdout_fraction": HOLDOUT_FRACTION, "holdout_seed": HOLDOUT_SEED, "cached": corpus.cached}
