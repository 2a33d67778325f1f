"""Livestream safety monitor: samples live streams, matches known content, alerts over MQTT."""

__version__ = "0.1.0"
