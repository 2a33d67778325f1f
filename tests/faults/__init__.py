"""Fault, crash and fuzz tests: hostile input, failing disks, broken connections, crashing decoders."""
