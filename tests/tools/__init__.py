"""Tests of the tooling (tools/): demo, benchmarks, evaluation, soak, the natural corpus."""
