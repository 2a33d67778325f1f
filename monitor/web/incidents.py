"""The web console's incident routes: claim and release, the incident view, its sample image (greyscale and
blurred by the server unless revealed; every fetch audited), actions with the two-person rule for permanent bans,
the report export, and the audit page for leads.

Actions go out as commands under the logged-in user (monitor/web/actions.py), signed when the console has a key;
the monitor answers by re-publishing the incident, which reaches every browser through the queue's events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web
from PIL import Image, ImageFilter, ImageOps

from monitor.contracts.base import ContractError
from monitor.contracts.messages import Incident
from monitor.evidence.export import export_incident
from monitor.evidence.records import IMAGE_KEY, EvidenceRecord
from monitor.evidence.store import SELECT_RECORDS, EvidenceError, db_error, open_readonly
from monitor.evidence.verify import verify
from monitor.web.actions import build_command
from monitor.web.queue import QueueError
from monitor.web.report import cybertip_report, report_xml
from monitor.web.sessions import Session
from monitor.web.users import DEFAULT_BLUR, Role, at_least

if TYPE_CHECKING:
    from monitor.web.server import WebConsole

__all__ = ["IncidentRoutes"]

Need = Callable[[web.Request, Role], Session]
MAX_REASON = 1000


def shielded(png: bytes, blur_px: int) -> bytes:
    """The sample greyscale and blurred (Gaussian, radius blur_px / 2), as PNG: what a moderator sees first."""
    with Image.open(io.BytesIO(png)) as img:
        out = ImageOps.grayscale(img)
        if blur_px > 0:
            out = out.filter(ImageFilter.GaussianBlur(radius=blur_px / 2))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def _minus_minute(iso: str) -> str:
    """An ISO time a minute earlier, as the evidence log writes times (UTC, Z), for a `recorded_at >=` bound."""
    try:
        t = datetime.fromisoformat(iso) - timedelta(minutes=1)
    except ValueError:
        return ""
    return t.strftime("%Y-%m-%dT%H:%M:%S")


class IncidentRoutes:
    def __init__(self, console: WebConsole, need: Need) -> None:
        self.c = console
        self.need = need

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/incidents/{id}", self.detail),
            web.get("/api/incidents/{id}/image", self.image),
            web.post("/api/incidents/{id}/claim", self.claim),
            web.post("/api/incidents/{id}/release", self.release),
            web.post("/api/incidents/{id}/action", self.action),
            web.get("/api/incidents/{id}/report.{fmt}", self.report),
            web.post("/api/approvals/{id}/approve", self.approve),
            web.post("/api/approvals/{id}/reject", self.reject),
            web.get("/api/audit", self.audit),
        ]

    # ------------------------------------------------------------------ reading
    def _match_rows(self, inc: Incident, *, images_only: bool = False) -> list[EvidenceRecord]:
        """The incident's newest 50 match records, oldest first.

        Match records are written before the incident book names their incident (monitor/app/engine.py
        `_handle_sample`), so they are found by stream, bank and entry from the incident's first sighting on."""
        log = self.c.audit.log
        if log is None:
            return []
        conn = open_readonly(log.path)
        try:
            rows = conn.execute(
                f"{SELECT_RECORDS} WHERE kind = 'match' AND stream_id = ? AND json_extract(body, '$.bank') = ?"
                " AND json_extract(body, '$.entry_id') = ? AND recorded_at >= ?"
                + (f" AND json_extract(body, '$.{IMAGE_KEY}') IS NOT NULL" if images_only else "")
                + " ORDER BY seq DESC LIMIT 50",
                (inc.stream_id, inc.bank, inc.entry_id, _minus_minute(inc.first_seen))).fetchall()
        except sqlite3.Error as exc:
            raise db_error(log.path, exc) from exc
        finally:
            conn.close()
        return [EvidenceRecord(*row) for row in reversed(rows)]

    def _evidence(self, inc: Incident) -> tuple[list[dict[str, object]], bool]:
        """The incident's match records as the view shows them (images left out), and whether one holds one."""
        matches: list[dict[str, object]] = []
        for rec in self._match_rows(inc):
            data = json.loads(rec.body)
            if isinstance(data, dict):
                matches.append({"seq": rec.seq, "hash": rec.hash, "recorded_at": rec.recorded_at,
                                "observed_at": rec.recorded_at, **{k: v for k, v in data.items() if k != IMAGE_KEY},
                                "has_image": IMAGE_KEY in data})
        return matches, any(m["has_image"] for m in matches)

    async def detail(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "viewer")
        inc = self.c.queue.get(request.match_info["id"])
        loop = asyncio.get_running_loop()
        try:
            matches, has_image = await loop.run_in_executor(None, self._evidence, inc)
            verification: dict[str, object] | None = None
            if self.c.audit.log is not None:
                rep = await loop.run_in_executor(None, verify, self.c.audit.log.path)
                verification = {"ok": rep.ok, "records": rep.records, "problems": rep.problems[:20]}
        except EvidenceError as exc:
            matches, has_image, verification = [], False, {"ok": False, "records": 0, "problems": [str(exc)]}
        self.c.audit.record("incident_view", user=s.user, role=s.role, stream_id=inc.stream_id,
                            incident_id=inc.incident_id)
        claim = self.c.queue.claim_of(inc.incident_id)
        return web.json_response({
            "incident": inc.model_dump(mode="json"), "claimed_by": claim.user if claim else None,
            "matches": matches[-50:], "has_image": has_image and self.c.cfg.evidence.store_images,
            "verification": verification,
            "approvals": [asdict(a) for a in self.c.queue.approvals.values() if a.incident_id == inc.incident_id]})

    async def image(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "viewer")
        inc = self.c.queue.get(request.match_info["id"])
        log = self.c.audit.log
        if not self.c.cfg.evidence.store_images or log is None:
            raise QueueError("images are not kept (evidence.store_images is off)", 404)
        png: bytes | None = None
        rows = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._match_rows(inc, images_only=True))
        for rec in rows[-1:]:
            data = json.loads(rec.body)
            try:
                png = base64.b64decode(str(data[IMAGE_KEY]), validate=True)
            except (binascii.Error, ValueError, KeyError, TypeError):
                png = None
        if png is None:
            raise QueueError(f"incident {inc.incident_id} has no stored image", 404)
        revealed = request.query.get("revealed") == "1"
        user = self.c.users.get(s.user)
        blur_px = user.blur_px if user is not None else DEFAULT_BLUR
        if not revealed:  # the clear picture reaches the browser only when asked for, and that is audited
            png = await asyncio.get_running_loop().run_in_executor(None, shielded, png, blur_px)
        self.c.audit.record("image_view", user=s.user, role=s.role, stream_id=inc.stream_id,
                            incident_id=inc.incident_id, revealed=revealed, blur_px=None if revealed else blur_px)
        return web.Response(body=png, content_type="image/png")

    # ------------------------------------------------------------------ claims
    async def claim(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        c = self.c.queue.claim(request.match_info["id"], s.user)
        self.c.audit.record("claim", user=s.user, role=s.role, incident_id=request.match_info["id"])
        self.c.broadcast("claims", self.c.queue.claims())
        return web.json_response({"claimed_by": c.user})

    async def release(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        self.c.queue.release(request.match_info["id"], s.user, s.role)
        self.c.audit.record("release", user=s.user, role=s.role, incident_id=request.match_info["id"])
        self.c.broadcast("claims", self.c.queue.claims())
        return web.json_response({"claimed_by": None})

    # ------------------------------------------------------------------ actions
    def _send(self, s: Session, incident_id: str, action: str, reason: str, approved_by: str | None = None,
              on_behalf: str | None = None) -> dict[str, object]:
        inc = self.c.queue.get(incident_id)
        try:
            cmd = build_command(action, incident_id=inc.incident_id, stream_id=inc.stream_id,
                                moderator=on_behalf or s.user, reason=reason or None)
        except ContractError as exc:
            raise QueueError(str(exc), 400) from None
        self.c.send(inc.node, self.c.signer.wrap(cmd, role=s.role if on_behalf is None else "moderator",
                                                 approved_by=approved_by))
        self.c.audit.record("action", user=on_behalf or s.user, role=s.role, stream_id=inc.stream_id,
                            incident_id=inc.incident_id, action=action, reason=reason, approved_by=approved_by,
                            command_id=cmd["command_id"], signed=self.c.signer.key is not None)
        return cmd

    async def action(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        incident_id = request.match_info["id"]
        try:
            data = await request.json()
            action, reason = str(data["action"]), str(data.get("reason") or "")
        except (ValueError, KeyError, TypeError):
            raise QueueError('send JSON {"action": ..., "reason": ...}', 400) from None
        if len(reason) > MAX_REASON:
            raise QueueError(f"reason: at most {MAX_REASON} characters", 400)
        if action == "dismiss" and not reason.strip():
            raise QueueError("dismiss: say why (a false positive's reason is recorded)", 400)
        self.c.queue.require_holder(incident_id, s.user)
        if action == "terminate" and self.c.permanent_ban and not at_least(s.role, "lead"):
            a = self.c.queue.request_approval(incident_id, s.user, reason)
            self.c.audit.record("ban_requested", user=s.user, role=s.role, incident_id=incident_id,
                                approval_id=a.approval_id, reason=reason)
            self.c.broadcast("approvals", self.c.approvals())
            return web.json_response({"pending_approval": a.approval_id}, status=202)
        cmd = self._send(s, incident_id, action, reason)
        return web.json_response({"sent": cmd["command_id"]})

    async def approve(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        a = self.c.queue.approve(request.match_info["id"], s.user, s.role)
        self.c.audit.record("ban_approved", user=s.user, role=s.role, incident_id=a.incident_id,
                            approval_id=a.approval_id, requested_by=a.requested_by)
        cmd = self._send(s, a.incident_id, "terminate", a.reason, approved_by=s.user, on_behalf=a.requested_by)
        self.c.broadcast("approvals", self.c.approvals())
        return web.json_response({"sent": cmd["command_id"], "approved_by": s.user})

    async def reject(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        a = self.c.queue.reject(request.match_info["id"], s.user, s.role)
        self.c.audit.record("ban_withdrawn", user=s.user, role=s.role, incident_id=a.incident_id,
                            approval_id=a.approval_id)
        self.c.broadcast("approvals", self.c.approvals())
        return web.json_response({"withdrawn": a.approval_id})

    # ------------------------------------------------------------------ reports and audit
    async def report(self, request: web.Request) -> web.StreamResponse:
        s = self.need(request, "moderator")
        fmt = request.match_info["fmt"]
        if fmt not in ("json", "xml"):
            raise QueueError("report.json or report.xml", 404)
        incident_id = request.match_info["id"]
        log = self.c.audit.log
        if log is None:
            raise QueueError("no evidence log here (evidence.enabled is off, or another state_dir)", 404)
        try:
            export = await asyncio.get_running_loop().run_in_executor(None, export_incident, log.path, incident_id)
        except KeyError:
            raise QueueError(f"no evidence of incident {incident_id}", 404) from None
        if not export.get("matches"):
            matches, _ = await asyncio.get_running_loop().run_in_executor(
                None, self._evidence, self.c.queue.get(incident_id))
            export = {**export, "matches": matches}
        report = cybertip_report(export, viewed_by=self.c.audit.viewers(incident_id))
        self.c.audit.record("report_export", user=s.user, role=s.role, incident_id=incident_id, format=fmt)
        name = f"cybertip-{incident_id}.{fmt}"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if fmt == "xml":
            return web.Response(text=report_xml(report), content_type="application/xml", headers=headers)
        return web.json_response(report, headers=headers)

    async def audit(self, request: web.Request) -> web.StreamResponse:
        self.need(request, "lead")
        entries = await asyncio.get_running_loop().run_in_executor(None, self.c.audit.entries)
        return web.json_response({"entries": entries})
