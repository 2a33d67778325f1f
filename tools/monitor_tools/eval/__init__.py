"""Evaluations: `images` (offline, hashers and robustness switches per transform) and `live` (`monitor eval`: the
whole monitor against live test streams with ground truth)."""
