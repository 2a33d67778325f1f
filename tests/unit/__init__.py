"""Tests of single parts, in process, no external programs."""
