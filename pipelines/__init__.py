"""Analyses that a sampled frame goes through; each turns a Sample into Findings. Nothing here imports the monitor.

- base.py: Sample, Finding and the pipeline protocols; registry.py: analyses built by kind from config entries.
- known_content.py: the hash matcher, over banks.py (hash lists in the formats in circulation) and the views and
  variants of robust.py (found with detect.py), hashed by fingerprint.py (PDQ, pHash).
- Hamming search: hamming.py (codes and distance kernels), index.py (the `HammingIndex` protocol and the
  brute-force `LinearIndex`), mih.py with mih_plan.py (multi-index hashing for large banks).
- classifier/: classifier pipelines (ONNX Runtime, or a service through the `Scorer` protocol).
"""
