"""From a stream URL to samples: readers, packet classification, coverage-driven sampling, the scheduler."""
