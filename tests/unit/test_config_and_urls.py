from __future__ import annotations

import pytest

from monitor.common.errors import ConfigError
from monitor.common.urls import redact_url
from monitor.config.models import build_config


def test_defaults_and_derived_broker_fields() -> None:
    cfg = build_config({"broker": {"url": "mqtts://example.org"}})
    assert cfg.broker.port == 8883 and cfg.broker.tls and cfg.broker.host == "example.org"
    assert cfg.ingest.read_timeout_s > 0 and cfg.matching.min_quality == 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": "x"}, "src: nodes: unknown key"),
        ({"streams": [{"id": "a b", "url": "x"}]}, "src: streams.0.id: must be 1-128 characters"),
        ({"streams": [{"id": "a", "url": "x"}, {"id": "a", "url": "y"}]}, "stream id 'a' appears twice"),
        ({"broker": {"url": "http://x"}}, "src: broker.url: must look like mqtt://HOST:PORT"),
        ({"broker": {"topic_prefix": "a/#"}}, "src: broker.topic_prefix: must be a non-empty topic path"),
        ({"banks": [{"name": "b", "path": "p", "signal_type": "md5"}]}, "src: banks.0.signal_type: Input should be"),
    ],
)
def test_errors_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(data, "src")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtmp://user:pw@host:1935/live/k", "rtmp://host:1935/live/***"),
        ("https://h/a.m3u8?token=abc&x=1", "https://h/***.m3u8?token=***&x=1"),
        ("rtmp://h/live/name?key=secret", "rtmp://h/live/n***?key=***"),
        ("rtmp://u:p@[2001:db8::1]:1935/x", "rtmp://[2001:db8::1]:1935/***"),
        # The stream name is the publisher's key: at most 3 characters (a quarter of it) are shown.
        ("rtmp://h:1935/live/secret-key-1", "rtmp://h:1935/live/sec***"),
        ("rtsp://h:8554/live/cam1", "rtsp://h:8554/live/c***"),
        ("srt://h:8890?streamid=read:live/k", "srt://h:8890?streamid=***"),
        ("http://h/hls/secretkey1234.m3u8", "http://h/hls/sec***.m3u8"),
        ("http://h/hls/secretkey1234/index.m3u8", "http://h/hls/sec***/index.m3u8"),
        ("rtmp://h:99999/live/k", "<unparseable url>"),
        ("/tmp/file.ts", "/tmp/file.ts"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
