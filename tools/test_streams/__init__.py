"""Test-stream generation: benign generated pictures shown at known times in a live stream."""
