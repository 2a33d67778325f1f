"""Offline image benchmark: recall of each hasher and robustness switch per transform, at precision >= 99.99%.

Method (the published one of the project's hashing notes):
- originals: generated benign pictures of three styles (known_image, Background frames, geometric
  compositions), 640x360; an original whose PDQ quality is below 50 is replaced by the next seed;
- for every transform and every original: the transformed picture, re-encoded as JPEG quality 80, scaled to the
  ingest width (`--width`, by default the monitor's 512) through libswscale as the monitor does, and hashed;
  originals are hashed the same way;
- positive: its distance to its own original; negative: its distance to the nearest other original;
- per hasher, the largest threshold keeping precision (positives / all matches, over every transform) at or
  above 99.99%; with fewer than 10^4 positives that is the threshold at which no negative matches at all, and
  the report says how many negative comparisons it rests on;
- recall per transform at that threshold and at the fixed default threshold (PDQ 31, pHash 40).
Hashers: PDQ, pHash (256-bit), dHash (imagehash.dhash, hash_size 16) on the whole frame, and the project's
pipeline (PDQ, quality gate 50) with each robustness switch of pipelines.robust. A pipeline distance is the
smallest over the sample's probes, as the matcher reports it.

Also: CPU cost per sample of each switch at that width, and the expected false alerts per stream-hour (one sample
per 2 s) against a 1M-entry bank.

`--corpus natural` runs the same method on the natural corpus (tools/test_streams/natural.py) with the streaming-layout
transforms, in a tuning and a held-out split (monitor_tools/eval/images/splits.py, docs/eval-images.md).

One JSON document goes to stdout; progress to stderr; `--table` adds Markdown tables on stderr and
`--markdown FILE` writes them to a file.

    python -m monitor_tools.eval.images [--corpus natural] [--quick] [--table] [--markdown FILE]

Modules: corpus (pictures, hashers, switch sets), scoring (generated pictures), splits (natural corpus),
stream_mode (layouts held fixed over a stream's samples, the matcher's layout model), report (Markdown), cli (options
and output).
"""
