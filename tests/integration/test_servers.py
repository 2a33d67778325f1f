"""Server API clients make exactly the documented calls and report failures with the server's reply.

Each test starts a fake server on a free 127.0.0.1 port that replays the documented replies of nginx-rtmp
(control + stat), MediaMTX (API v3) and SRS (API v1) and records every request it gets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.servers.api import (
    DropResult,
    MediaMTXAPI,
    NginxRtmpAPI,
    ServerAPI,
    ServerAPIError,
    ServerStream,
    SrsAPI,
    parse_nginx_rtmp_stat,
)
from test_streams.broker import free_port

Reply = tuple[int, str | bytes, str]  # status, body, content type
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fake:
    """Replays scripted replies keyed by (method, path) and records (method, path_qs) of every request."""

    replies: dict[tuple[str, str], Reply | Handler]
    calls: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.raw_path))
        self.headers.append(dict(request.headers))
        reply = self.replies.get((request.method, request.path))
        if reply is None:
            return web.Response(status=404, text="404 page not found")
        if callable(reply):
            return await reply(request)
        status, body, ctype = reply
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=data, content_type=ctype)


def run_with_fake(fake: Fake, fn: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            return await fn(str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()

    return asyncio.run(main())


def json_reply(doc: object, status: int = 200) -> Reply:
    return (status, json.dumps(doc), "application/json")


# -- nginx-rtmp ----------------------------------------------------------------------------------------------

STAT_XML = """<?xml version="1.0" encoding="utf-8" ?>
<?xml-stylesheet type="text/xsl" href="stat.xsl" ?>
<rtmp>
<nginx_version>1.22.1</nginx_version>
<nginx_rtmp_version>1.1.4</nginx_rtmp_version>
<compiler>gcc 12.2.0 (Debian 12.2.0-14) </compiler>
<built>Nov 18 2023 12:00:00</built>
<pid>4242</pid>
<uptime>73</uptime>
<naccepted>3</naccepted>
<bw_in>1562304</bw_in>
<bytes_in>13412342</bytes_in>
<bw_out>0</bw_out>
<bytes_out>3302</bytes_out>
<server>
<application>
<name>live</name>
<live>
<stream>
<name>cam1</name>
<time>65023</time>
<bw_in>1562304</bw_in>
<bytes_in>13409120</bytes_in>
<bw_out>0</bw_out>
<bytes_out>0</bytes_out>
<bw_audio>0</bw_audio>
<bw_video>1562304</bw_video>
<client><id>7</id><address>127.0.0.1</address><time>1200</time><flashver>LNX 9,0,124,2</flashver>
<dropped>0</dropped><avsync>0</avsync><timestamp>0</timestamp><active/></client>
<client><id>5</id><address>203.0.113.9</address><time>65023</time>
<flashver>FMLE/3.0 (compatible; Lavf59.27.100)</flashver><dropped>0</dropped><avsync>-10</avsync>
<timestamp>64980</timestamp><publishing/><active/></client>
<meta><video><width>640</width><height>360</height><frame_rate>25</frame_rate><codec>H264</codec>
<profile>High</profile><compat>0</compat><level>3.0</level></video></meta>
<nclients>2</nclients>
<publishing/>
<active/>
</stream>
<stream>
<name>idle</name>
<time>1000</time>
<client><id>9</id><address>127.0.0.1</address><time>1000</time><flashver>LNX 9,0,124,2</flashver>
<dropped>0</dropped><avsync>0</avsync><timestamp>0</timestamp></client>
<nclients>1</nclients>
</stream>
<nclients>3</nclients>
</live>
</application>
<application>
<name>other</name>
<live>
<stream><name>s2</name><time>10</time><nclients>0</nclients><publishing/><active/></stream>
<nclients>0</nclients>
</live>
</application>
</server>
</rtmp>
"""


def test_nginx_drop_publisher_exact_call() -> None:
    fake = Fake({("GET", "/control/drop/publisher"): (200, "1", "text/plain")})
    result = run_with_fake(fake, lambda base: NginxRtmpAPI(base).drop_publisher("live", "cam 1&x"))
    assert result == DropResult(True, "nginx-rtmp dropped 1 publisher(s) of live/c***", 1)  # the name: a key
    assert fake.calls == [("GET", "/control/drop/publisher?app=live&name=cam+1%26x")]


def test_nginx_drop_nothing_or_refused() -> None:
    fake = Fake({("GET", "/control/drop/publisher"): (200, "0", "text/plain")})
    result = run_with_fake(fake, lambda base: NginxRtmpAPI(base).drop_publisher("live", "gone"))
    assert not result.ok and "no publisher" in result.detail

    fake = Fake({("GET", "/control/drop/publisher"): (400, "Application not found", "text/plain")})
    result = run_with_fake(fake, lambda base: NginxRtmpAPI(base).drop_publisher("nope", "x"))
    assert not result.ok
    assert "HTTP 400" in result.detail and "Application not found" in result.detail

    fake = Fake({("GET", "/control/drop/publisher"): (200, "<html>oops</html>", "text/html")})
    result = run_with_fake(fake, lambda base: NginxRtmpAPI(base).drop_publisher("live", "x"))
    assert not result.ok and "unexpected reply" in result.detail and "oops" in result.detail


def test_nginx_list_streams_from_stat() -> None:
    fake = Fake({("GET", "/rtmp/stat"): (200, STAT_XML, "text/xml")})

    async def go(base: str) -> list[ServerStream]:
        api = NginxRtmpAPI(base + "/", control_path="/ctl/", stat_path="rtmp/stat")
        return await api.list_streams()

    streams = run_with_fake(fake, go)
    assert streams == [
        ServerStream("live", "cam1", "5", "203.0.113.9"),
        ServerStream("other", "s2", None, None),
    ]
    assert fake.calls == [("GET", "/rtmp/stat")]


def test_nginx_stat_errors() -> None:
    fake = Fake({("GET", "/stat"): (200, "<rtmp><server>", "text/xml")})
    with pytest.raises(ServerAPIError, match="not XML"):
        run_with_fake(fake, lambda base: NginxRtmpAPI(base).list_streams())
    fake = Fake({("GET", "/stat"): (403, "forbidden by config", "text/plain")})
    with pytest.raises(ServerAPIError, match="HTTP 403: forbidden by config"):
        run_with_fake(fake, lambda base: NginxRtmpAPI(base).list_streams())
    with pytest.raises(ServerAPIError, match="<html>"):
        parse_nginx_rtmp_stat(b"<html/>")


# -- MediaMTX ------------------------------------------------------------------------------------------------

MTX_ID = "6b3f1a5e-1d2c-4f7a-9a0b-3c8d2e1f4a55"


def mtx_path(name: str, source: dict[str, str] | None) -> dict[str, Any]:
    return {
        "name": name,
        "confName": "all_others",
        "source": source,
        "ready": source is not None,
        "readyTime": "2025-01-01T12:00:00.000000000Z" if source else None,
        "tracks": ["H264", "MPEG-4 Audio"] if source else [],
        "bytesReceived": 123456,
        "bytesSent": 0,
        "readers": [],
    }


@pytest.mark.parametrize(
    ("source_type", "kind"),
    [
        ("rtmpConn", "rtmpconns"),
        ("rtmpsConn", "rtmpsconns"),
        ("rtspSession", "rtspsessions"),
        ("rtspsSession", "rtspssessions"),
        ("srtConn", "srtconns"),
        ("webRTCSession", "webrtcsessions"),
    ],
)
def test_mediamtx_drop_kicks_by_source_type(source_type: str, kind: str) -> None:
    fake = Fake(
        {
            ("GET", "/v3/paths/get/live/cam1"): json_reply(
                mtx_path("live/cam1", {"type": source_type, "id": MTX_ID})
            ),
            ("POST", f"/v3/{kind}/kick/{MTX_ID}"): (200, "", "application/json"),
        }
    )
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("live", "cam1"))
    assert result.ok and result.dropped == 1 and MTX_ID in result.detail
    assert fake.calls == [("GET", "/v3/paths/get/live/cam1"), ("POST", f"/v3/{kind}/kick/{MTX_ID}")]


def test_mediamtx_drop_failures() -> None:
    fake = Fake({("GET", "/v3/paths/get/live/x"): json_reply({"error": "path not found"}, 404)})
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("live", "x"))
    assert not result.ok and "path not found" in result.detail

    fake = Fake({("GET", "/v3/paths/get/cam"): json_reply(mtx_path("cam", {"type": "rtspSource", "id": ""}))})
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("", "cam"))
    assert not result.ok and "no publisher" in result.detail

    fake = Fake(
        {("GET", "/v3/paths/get/cam"): json_reply(mtx_path("cam", {"type": "rtspSource", "id": MTX_ID}))}
    )
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("", "cam"))
    assert not result.ok and "rtspSource" in result.detail
    assert fake.calls == [("GET", "/v3/paths/get/cam")]  # no kick attempted

    fake = Fake({("GET", "/v3/paths/get/idle"): json_reply(mtx_path("idle", None))})
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("", "idle"))
    assert not result.ok and "no publisher" in result.detail

    fake = Fake(
        {
            ("GET", "/v3/paths/get/live/cam1"): json_reply(
                mtx_path("live/cam1", {"type": "rtmpConn", "id": "c1"})
            ),
            ("POST", "/v3/rtmpconns/kick/c1"): json_reply({"error": "connection not found"}, 404),
        }
    )
    result = run_with_fake(fake, lambda base: MediaMTXAPI(base).drop_publisher("live", "cam1"))
    assert not result.ok and "HTTP 404" in result.detail and "connection not found" in result.detail


def test_mediamtx_list_streams_pages() -> None:
    pages = {
        "0": {
            "pageCount": 2,
            "itemCount": 3,
            "items": [mtx_path("live/cam1", {"type": "rtmpConn", "id": MTX_ID}), mtx_path("idle", None)],
        },
        "1": {"pageCount": 2, "itemCount": 3, "items": [mtx_path("top", {"type": "srtConn", "id": "s1"})]},
    }

    async def paths_list(request: web.Request) -> web.Response:
        return web.json_response(pages[request.query["page"]])

    fake = Fake({("GET", "/v3/paths/list"): paths_list})
    streams = run_with_fake(fake, lambda base: MediaMTXAPI(base).list_streams())
    assert streams == [ServerStream("live", "cam1", MTX_ID, None), ServerStream("", "top", "s1", None)]
    assert fake.calls == [
        ("GET", "/v3/paths/list?page=0&itemsPerPage=100"),
        ("GET", "/v3/paths/list?page=1&itemsPerPage=100"),
    ]


def test_mediamtx_basic_auth_is_sent() -> None:
    fake = Fake({("GET", "/v3/paths/list"): json_reply({"pageCount": 0, "itemCount": 0, "items": []})})
    run_with_fake(fake, lambda base: MediaMTXAPI(base, auth=("api", "pw")).list_streams())
    assert fake.headers[0]["Authorization"] == "Basic YXBpOnB3"


# -- SRS -----------------------------------------------------------------------------------------------------

SRS_STREAMS = {
    "code": 0,
    "server": "vid-0xk989d",
    "service": "ez1k6n0",
    "pid": "2137",
    "streams": [
        {
            "id": "vid-y19n6f5",
            "name": "livestream",
            "vhost": "vid-y1ic3i1",
            "app": "live",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
            "url": "/live/livestream",
            "live_ms": 1735732800000,
            "clients": 2,
            "frames": 1500,
            "send_bytes": 0,
            "recv_bytes": 1234567,
            "kbps": {"recv_30s": 1500, "send_30s": 0},
            "publish": {"active": True, "cid": "7o7wb5p1"},
            "video": {"codec": "H264", "profile": "High", "level": "3.1", "width": 768, "height": 320},
            "audio": {"codec": "AAC", "sample_rate": 44100, "channel": 2, "profile": "LC"},
        },
        {
            "id": "vid-k3l9",
            "name": "ended",
            "vhost": "vid-y1ic3i1",
            "app": "live",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
            "url": "/live/ended",
            "live_ms": 1735732800000,
            "clients": 0,
            "frames": 0,
            "send_bytes": 0,
            "recv_bytes": 0,
            "kbps": {"recv_30s": 0, "send_30s": 0},
            "publish": {"active": False},
            "video": None,
            "audio": None,
        },
    ],
}
SRS_CLIENTS = {
    "code": 0,
    "server": "vid-0xk989d",
    "clients": [
        {
            "id": "7o7wb5p1",
            "vhost": "vid-y1ic3i1",
            "stream": "vid-y19n6f5",
            "ip": "198.51.100.23",
            "pageUrl": "",
            "swfUrl": "",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
            "url": "/live/livestream",
            "name": "livestream",
            "type": "fmle-publish",
            "publish": True,
            "alive": 12.3,
        }
    ],
}


def test_srs_drop_publisher_exact_calls() -> None:
    fake = Fake(
        {
            ("GET", "/api/v1/streams"): json_reply(SRS_STREAMS),
            ("DELETE", "/api/v1/clients/7o7wb5p1"): json_reply({"code": 0}),
        }
    )
    result = run_with_fake(fake, lambda base: SrsAPI(base).drop_publisher("live", "livestream"))
    assert result.ok and result.dropped == 1 and "7o7wb5p1" in result.detail
    assert fake.calls == [
        ("GET", "/api/v1/streams?start=0&count=1000"),
        ("DELETE", "/api/v1/clients/7o7wb5p1"),
    ]


def test_srs_drop_failures() -> None:
    fake = Fake({("GET", "/api/v1/streams"): json_reply(SRS_STREAMS)})
    result = run_with_fake(fake, lambda base: SrsAPI(base).drop_publisher("live", "ended"))
    assert not result.ok and "no active publisher" in result.detail
    assert [c[0] for c in fake.calls] == ["GET"]

    fake = Fake(
        {
            ("GET", "/api/v1/streams"): json_reply(SRS_STREAMS),
            ("DELETE", "/api/v1/clients/7o7wb5p1"): json_reply({"code": 2049}),
        }
    )
    result = run_with_fake(fake, lambda base: SrsAPI(base).drop_publisher("live", "livestream"))
    assert not result.ok and "2049" in result.detail

    fake = Fake({("GET", "/api/v1/streams"): json_reply({"code": 1061})})
    result = run_with_fake(fake, lambda base: SrsAPI(base).drop_publisher("live", "livestream"))
    assert not result.ok and "1061" in result.detail


def test_srs_list_streams_with_addresses() -> None:
    fake = Fake(
        {
            ("GET", "/api/v1/streams"): json_reply(SRS_STREAMS),
            ("GET", "/api/v1/clients"): json_reply(SRS_CLIENTS),
        }
    )
    streams = run_with_fake(fake, lambda base: SrsAPI(base).list_streams())
    assert streams == [ServerStream("live", "livestream", "7o7wb5p1", "198.51.100.23")]
    assert fake.calls == [
        ("GET", "/api/v1/streams?start=0&count=1000"),
        ("GET", "/api/v1/clients?start=0&count=1000"),
    ]
    # The clients list is optional.
    fake = Fake({("GET", "/api/v1/streams"): json_reply(SRS_STREAMS)})
    streams = run_with_fake(fake, lambda base: SrsAPI(base).list_streams())
    assert streams == [ServerStream("live", "livestream", "7o7wb5p1", None)]


# -- common failure handling ---------------------------------------------------------------------------------

APIS: list[type[ServerAPI]] = [NginxRtmpAPI, MediaMTXAPI, SrsAPI]


@pytest.mark.parametrize("cls", APIS)
def test_unreachable_server(cls: type[ServerAPI]) -> None:
    base = f"http://127.0.0.1:{free_port()}"

    async def go() -> DropResult:
        api = cls(base, timeout=2)
        with pytest.raises(ServerAPIError, match=r"127\.0\.0\.1"):
            await api.list_streams()
        return await api.drop_publisher("live", "x")

    result = asyncio.run(go())
    assert not result.ok and "127.0.0.1" in result.detail


@pytest.mark.parametrize("cls", APIS)
def test_timeout(cls: type[ServerAPI]) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    fake = Fake(
        {
            (m, p): slow
            for m in ("GET", "POST", "DELETE")
            for p in (
                "/control/drop/publisher",
                "/stat",
                "/v3/paths/get/live/x",
                "/v3/paths/list",
                "/api/v1/streams",
            )
        }
    )

    async def go(base: str) -> DropResult:
        return await cls(base, timeout=0.3).drop_publisher("live", "x")

    result = run_with_fake(fake, go)
    assert not result.ok and "no reply within 0.3 s" in result.detail


def test_redirects_are_not_followed() -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    fake = Fake({("GET", "/control/drop/publisher"): redirect})
    result = run_with_fake(fake, lambda base: NginxRtmpAPI(base).drop_publisher("live", "x"))
    assert not result.ok and "HTTP 302" in result.detail
    assert len(fake.calls) == 1


def test_non_json_reply_is_reported() -> None:
    fake = Fake({("GET", "/api/v1/streams"): (200, "<html>proxy error</html>", "text/html")})
    result = run_with_fake(fake, lambda base: SrsAPI(base).drop_publisher("live", "x"))
    assert not result.ok and "not JSON" in result.detail and "proxy error" in result.detail


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://127.0.0.1/", "http"),
        ("127.0.0.1:1985", "http"),
        ("file:///etc/passwd", "http"),
        ("http://", "http"),
        ("http://admin:pw@127.0.0.1:9997", "auth="),
        ("http://127.0.0.1:9997/?x=1", "query"),
    ],
)
def test_base_url_validation(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MediaMTXAPI(url)


def test_https_and_path_prefix_accepted() -> None:
    assert SrsAPI("https://srs.example.net:1985/").base_url == "https://srs.example.net:1985"
    assert NginxRtmpAPI("http://10.0.0.5/rtmp-admin").base_url == "http://10.0.0.5/rtmp-admin"
    with pytest.raises(ValueError, match="timeout"):
        SrsAPI("http://127.0.0.1", timeout=0)
