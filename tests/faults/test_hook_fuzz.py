"""Fuzzing the hook signature check (issue 19; tests/faults/test_fuzz_parsers.py is the style): whatever the headers,
the check answers with a reason and never raises; a genuine signature passes exactly once; any change to the
method, route, query, timestamp, nonce, body or signature makes it fail."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.servers.bans import BanList
from monitor.servers.hooks import (
    AUTH_KEY,
    NONCE_HEADER,
    ROUTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HookAuth,
    HookSettings,
    StreamNamer,
    make_hook_app,
    sign_request,
)

SECRET = "hook-secret-0123456789abcdef"
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
nonces = st.text("abcdefABCDEF0123456789_-", min_size=16, max_size=64)
queries = st.sampled_from(["", "x=1", "token=abc", "a=%20b&c=d"])


class _Registry:
    def add_stream(self, stream_id: str, url: str, **kw: Any) -> None: ...

    def remove_stream(self, stream_id: str, **kw: Any) -> None: ...


def _auth(tmp: Path) -> HookAuth:
    app = make_hook_app(_Registry(), BanList(tmp / "bans.json"), HookSettings(secret=SECRET),
                        namer=StreamNamer.ephemeral())
    return app[AUTH_KEY]


def _request(method: str, route: str, query: str, headers: dict[str, str]) -> web.Request:
    return make_mocked_request(method, route + (f"?{query}" if query else ""), headers=headers)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(st.sampled_from([SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, "X-Other"]),
                               header_text | st.sampled_from(["sha256=", "sha256=00", "0", "9" * 13]), max_size=4),
       route=st.sampled_from(ROUTES), body=st.binary(max_size=200))
def test_noise_never_passes_and_never_raises(tmp_path: Path, headers: dict[str, str], route: str,
                                             body: bytes) -> None:
    hooks = _auth(tmp_path)
    problem = hooks.signature_problem(_request("POST", route, "", headers), body)
    assert isinstance(problem, str) and problem


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), other_route=st.sampled_from(ROUTES), query=queries, other_query=queries,
       body=st.binary(max_size=200), other_body=st.binary(max_size=200), nonce=nonces, other_nonce=nonces,
       skew=st.integers(-50, 50), other_skew=st.integers(-3600, 3600),
       what=st.sampled_from(["route", "method", "query", "body", "timestamp", "nonce", "signature", "none"]))
def test_any_change_breaks_the_signature(tmp_path: Path, route: str, other_route: str, query: str,
                                         other_query: str, body: bytes, other_body: bytes, nonce: str,
                                         other_nonce: str, skew: int, other_skew: int, what: str) -> None:
    hooks = _auth(tmp_path)
    ts = int(time.time()) + skew
    headers = sign_request(SECRET, "POST", route, body, query=query, timestamp=ts, nonce=nonce)
    method = "POST"
    if what == "route":
        route = other_route if other_route != route else route + "x"
    elif what == "method":
        method = "PUT"
    elif what == "query":
        query = other_query if other_query != query else query + "&z=9"
    elif what == "body":
        body = other_body if other_body != body else body + b"!"
    elif what == "timestamp":
        headers[TIMESTAMP_HEADER] = str(ts + (other_skew or 1))
    elif what == "nonce":
        headers[NONCE_HEADER] = other_nonce if other_nonce != nonce else nonce[::-1] + "q"
    elif what == "signature":
        sig = headers[SIGNATURE_HEADER]
        headers[SIGNATURE_HEADER] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    problem = hooks.signature_problem(_request(method, route, query, headers), body)
    if what == "none":
        assert problem is None
        assert hooks.signature_problem(_request(method, route, query, headers), body) == "signature replayed"
    else:
        assert problem is not None, what
