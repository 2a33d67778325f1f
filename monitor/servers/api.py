"""Clients for the streaming servers' HTTP APIs: list the publishing streams and drop (kick) a publisher.

Kicking only ends the current session: publishing software reconnects within seconds, so a drop must go with a
ban that the publish hook enforces (monitor.servers.bans, monitor.servers.hooks).

`drop_publisher` never raises for server trouble: it answers a DropResult whose `detail` quotes the server's
reply, because the caller is an alert path that must carry on. `list_streams` raises ServerAPIError.
Every call has a timeout. Production servers may live on other hosts, so any http(s) base URL is accepted.

MediaMTX has paths rather than app/name pairs: a path "live/cam1" is app "live", name "cam1" (split at the
last slash), and app "" means a path without a slash.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from monitor.common.urls import hide_segment, redact_url

DEFAULT_TIMEOUT_S = 5.0
_MAX_REPLY_BYTES = 8 * 1024 * 1024  # a stat page with thousands of streams still fits
_DETAIL_CHARS = 300
_SRS_PAGE = 1000  # SRS answers at most `count` streams (default 10): ask for plenty
_MTX_ITEMS_PER_PAGE = 100
_MTX_MAX_PAGES = 1000

# MediaMTX `source.type` of a publishing connection -> API collection that can kick it. Other types
# (hlsSource, rtspSource, rpiCameraSource, udpSource, redirect, ...) are pulls the server itself makes.
MEDIAMTX_KICK_KINDS: dict[str, str] = {
    "rtmpConn": "rtmpconns",
    "rtmpsConn": "rtmpsconns",
    "rtspSession": "rtspsessions",
    "rtspsSession": "rtspssessions",
    "srtConn": "srtconns",
    "webRTCSession": "webrtcsessions",
}


@dataclass(frozen=True, slots=True)
class ServerStream:
    """A stream being published on a server. `publisher_id` is the server's connection id."""

    app: str
    name: str
    publisher_id: str | None
    client_addr: str | None = None


@dataclass(frozen=True, slots=True)
class DropResult:
    """Outcome of a kick: `ok` means the server says it dropped a publisher; `detail` is for humans/logs."""

    ok: bool
    detail: str
    dropped: int = 0


class ServerAPIError(Exception):
    """An API call failed; the message names the call and quotes the server's reply."""


@dataclass(frozen=True, slots=True)
class _Reply:
    method: str
    url: str
    status: int
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def snippet(self) -> str:
        text = " ".join(self.text().split())
        return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"

    def describe(self) -> str:
        return f"{self.method} {self.url}: HTTP {self.status}: {self.snippet() or '(empty body)'}"

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise ServerAPIError(f"{self.method} {self.url}: reply is not JSON: {self.snippet()!r}") from None

    def json_object(self) -> dict[str, object]:
        doc = self.json()
        if not isinstance(doc, dict):
            raise ServerAPIError(f"{self.method} {self.url}: expected a JSON object: {self.snippet()!r}")
        return doc


def _check_base_url(base_url: str) -> str:
    try:
        url = URL(base_url)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid server API URL {base_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"server API URL must be http:// or https:// with a host, got {base_url!r}")
    if url.user is not None or url.password is not None:
        # Error messages quote URLs; credentials belong in auth= so they never reach a log.
        raise ValueError("put server API credentials in auth=(user, password), not in the URL")
    if url.query_string or url.fragment:
        raise ValueError(f"server API URL must not carry a query or fragment, got {base_url!r}")
    return str(url).rstrip("/")


def _seg(value: str) -> str:
    """One path segment, percent-encoded (ids and names come from servers and publishers)."""
    return quote(value, safe="")


class ServerAPI(ABC):
    """Common plumbing: one aiohttp request per call with a total timeout, no redirects, bounded replies.

    Pass `session` to reuse a ClientSession (its owner closes it); otherwise each call opens its own, which
    suits the rare kicks this is for and leaves nothing to close.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        auth: tuple[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.base_url = _check_base_url(base_url)
        self.timeout = timeout
        self._auth = aiohttp.BasicAuth(auth[0], auth[1]) if auth is not None else None
        self._session = session

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    @abstractmethod
    async def drop_publisher(self, app: str, name: str) -> DropResult:
        """Kick whoever publishes app/name. Never raises for server or network trouble."""

    @abstractmethod
    async def list_streams(self) -> list[ServerStream]:
        """Streams being published now. Raises ServerAPIError."""

    async def _call(self, method: str, path: str, params: Mapping[str, str] | None = None, *,
                    hide_last: bool = False) -> _Reply:
        """`path` must already be percent-encoded; `params` are encoded here. Errors and replies show the URL
        without the stream name (a `name` argument, or the last path segment with `hide_last`): it is often
        the publisher's key."""
        url = URL(self.base_url + path, encoded=True)
        if params:
            url = url.update_query(params)
        shown = redact_url(str(url))
        if hide_last:
            head, _, last = shown.partition("?")[0].rpartition("/")
            shown = f"{head}/{hide_segment(last)}"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            if self._session is not None:
                return await self._send(self._session, method, url, shown, timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                return await self._send(session, method, url, shown, timeout)
        except TimeoutError:
            raise ServerAPIError(f"{method} {shown}: no reply within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ServerAPIError(f"{method} {shown}: {type(exc).__name__}: {exc}") from None

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        shown: str,
        timeout: aiohttp.ClientTimeout,
    ) -> _Reply:
        request = session.request(method, url, auth=self._auth, timeout=timeout, allow_redirects=False)
        async with request as resp:
            body = await resp.content.read(_MAX_REPLY_BYTES + 1)
            while len(body) <= _MAX_REPLY_BYTES:
                more = await resp.content.read(_MAX_REPLY_BYTES + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > _MAX_REPLY_BYTES:
                raise ServerAPIError(f"{method} {shown}: reply larger than {_MAX_REPLY_BYTES} bytes")
            return _Reply(method, shown, resp.status, body)


class NginxRtmpAPI(ServerAPI):
    """nginx with the RTMP module: `rtmp_control all;` at `control_path`, `rtmp_stat all;` at `stat_path`."""

    kind = "nginx-rtmp"

    def __init__(
        self,
        base_url: str,
        *,
        control_path: str = "/control",
        stat_path: str = "/stat",
        timeout: float = DEFAULT_TIMEOUT_S,
        auth: tuple[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, auth=auth, session=session)
        self.control_path = "/" + quote(control_path.strip("/"), safe="/")
        self.stat_path = "/" + quote(stat_path.strip("/"), safe="/")

    async def drop_publisher(self, app: str, name: str) -> DropResult:
        try:
            reply = await self._call("GET", f"{self.control_path}/drop/publisher", {"app": app, "name": name})
        except ServerAPIError as exc:
            return DropResult(False, str(exc))
        if reply.status != 200:
            return DropResult(False, reply.describe())
        try:
            count = int(reply.text().strip())  # the reply body is the number of clients dropped
        except ValueError:
            return DropResult(False, f"unexpected reply to drop: {reply.describe()}")
        if count <= 0:
            return DropResult(False, f"nginx-rtmp dropped no publisher of {app}/{hide_segment(name)}")
        return DropResult(True, f"nginx-rtmp dropped {count} publisher(s) of {app}/{hide_segment(name)}", count)

    async def list_streams(self) -> list[ServerStream]:
        reply = await self._call("GET", self.stat_path)
        if reply.status != 200:
            raise ServerAPIError(reply.describe())
        return parse_nginx_rtmp_stat(reply.body, source=reply.url)


def parse_nginx_rtmp_stat(xml: bytes, *, source: str = "stat") -> list[ServerStream]:
    """Publishing streams in nginx-rtmp's stat XML (rtmp/server/application/live/stream)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ServerAPIError(f"{source}: stat reply is not XML: {exc}") from None
    if root.tag != "rtmp":
        raise ServerAPIError(f"{source}: stat reply root is <{root.tag}>, expected <rtmp>")
    streams: list[ServerStream] = []
    for application in root.iterfind("server/application"):
        app = (application.findtext("name") or "").strip()
        for stream in application.iterfind("live/stream"):
            if stream.find("publishing") is None:
                continue
            name = (stream.findtext("name") or "").strip()
            pub_id: str | None = None
            addr: str | None = None
            for client in stream.iterfind("client"):
                if client.find("publishing") is not None:
                    pub_id = (client.findtext("id") or "").strip() or None
                    addr = (client.findtext("address") or "").strip() or None
                    break
            streams.append(ServerStream(app, name, pub_id, addr))
    return streams


class MediaMTXAPI(ServerAPI):
    """MediaMTX control API v3 (`api: yes`, port 9997 by default)."""

    kind = "mediamtx"

    async def drop_publisher(self, app: str, name: str) -> DropResult:
        path = f"{app}/{name}" if app else name
        shown = f"{app}/{hide_segment(name)}" if app else hide_segment(name)  # the name may be the key
        try:
            reply = await self._call("GET", f"/v3/paths/get/{quote(path, safe='/')}", hide_last=True)
            if reply.status == 404:
                return DropResult(False, f"MediaMTX has no path {shown!r}: {reply.describe()}")
            if reply.status != 200:
                return DropResult(False, reply.describe())
            source = reply.json_object().get("source")
            if not isinstance(source, dict) or not source.get("id"):
                return DropResult(False, f"MediaMTX path {shown!r} has no publisher")
            src_type, src_id = str(source.get("type", "")), str(source["id"])
            kind = MEDIAMTX_KICK_KINDS.get(src_type)
            if kind is None:
                return DropResult(False, f"MediaMTX path {shown!r}: source type {src_type!r} cannot be kicked")
            reply = await self._call("POST", f"/v3/{kind}/kick/{_seg(src_id)}")
        except ServerAPIError as exc:
            return DropResult(False, str(exc))
        if reply.status != 200:
            return DropResult(False, reply.describe())
        return DropResult(True, f"MediaMTX kicked {src_type} {src_id} publishing {shown!r}", 1)

    async def list_streams(self) -> list[ServerStream]:
        streams: list[ServerStream] = []
        page = 0
        while True:
            reply = await self._call(
                "GET", "/v3/paths/list", {"page": str(page), "itemsPerPage": str(_MTX_ITEMS_PER_PAGE)}
            )
            if reply.status != 200:
                raise ServerAPIError(reply.describe())
            doc = reply.json_object()
            items = doc.get("items")
            if not isinstance(items, list):
                raise ServerAPIError(f"{reply.url}: no items array: {reply.snippet()!r}")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    continue
                source = item.get("source")
                if not isinstance(source, dict):
                    continue  # a configured path nobody publishes to
                app, _, name = item["name"].rpartition("/")
                src_id = source.get("id")
                streams.append(ServerStream(app, name, str(src_id) if src_id else None, None))
            page += 1
            page_count = doc.get("pageCount", 1)
            if not isinstance(page_count, int) or page >= page_count or page >= _MTX_MAX_PAGES:
                return streams


class SrsAPI(ServerAPI):
    """SRS HTTP API v1 (port 1985 by default)."""

    kind = "srs"

    async def _streams(self) -> list[dict[str, object]]:
        reply = await self._call("GET", "/api/v1/streams", {"start": "0", "count": str(_SRS_PAGE)})
        if reply.status != 200:
            raise ServerAPIError(reply.describe())
        doc = reply.json_object()
        streams = doc.get("streams")
        if doc.get("code", 0) != 0 or not isinstance(streams, list):
            raise ServerAPIError(f"SRS refused to list streams: {reply.describe()}")
        return [s for s in streams if isinstance(s, dict)]

    @staticmethod
    def _publisher_cid(stream: Mapping[str, object]) -> str | None:
        publish = stream.get("publish")
        if isinstance(publish, dict) and publish.get("active") and publish.get("cid"):
            return str(publish["cid"])
        return None

    async def drop_publisher(self, app: str, name: str) -> DropResult:
        try:
            streams = await self._streams()
        except ServerAPIError as exc:
            return DropResult(False, str(exc))
        cids = [
            cid
            for s in streams
            if s.get("app") == app and s.get("name") == name and (cid := self._publisher_cid(s)) is not None
        ]
        if not cids:
            return DropResult(False, f"SRS has no active publisher of {app}/{hide_segment(name)}")
        failures: list[str] = []
        for cid in cids:  # one per vhost at most
            try:
                reply = await self._call("DELETE", f"/api/v1/clients/{_seg(cid)}")
            except ServerAPIError as exc:
                failures.append(str(exc))
                continue
            code: object = None
            if reply.status == 200:
                try:
                    doc = reply.json()
                except ServerAPIError:
                    doc = None
                code = doc.get("code") if isinstance(doc, dict) else doc
            if code != 0:
                failures.append(reply.describe())
        dropped = len(cids) - len(failures)
        if failures:
            return DropResult(False, "; ".join(failures), dropped)
        return DropResult(True, f"SRS dropped client(s) {', '.join(cids)} publishing {app}/{hide_segment(name)}",
                          dropped)

    async def list_streams(self) -> list[ServerStream]:
        streams = await self._streams()
        addrs: dict[str, str] = {}
        try:
            # Publisher addresses are only in the clients list; nice to have, so failures are ignored.
            reply = await self._call("GET", "/api/v1/clients", {"start": "0", "count": str(_SRS_PAGE)})
            clients = reply.json_object().get("clients") if reply.status == 200 else None
            for c in clients if isinstance(clients, list) else []:
                if isinstance(c, dict) and c.get("id") and isinstance(c.get("ip"), str):
                    addrs[str(c["id"])] = c["ip"]
        except ServerAPIError:
            pass
        out: list[ServerStream] = []
        for s in streams:
            cid = self._publisher_cid(s)
            if cid is None:
                continue
            out.append(ServerStream(str(s.get("app", "")), str(s.get("name", "")), cid, addrs.get(cid)))
        return out
