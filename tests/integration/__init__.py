"""Tests with real components: Mosquitto, nginx-rtmp, ffmpeg, monitor processes (started by fixtures)."""
