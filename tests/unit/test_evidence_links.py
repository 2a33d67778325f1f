"""Evidence of hash matches: the matched sample under evidence.store_images, and the unconfirmed matches an
incident folds in linked to it (monitor/app/records.py, monitor/evidence/export.py), through the real Engine,
EvidenceWriter and EvidenceLog."""

from __future__ import annotations

import base64
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from monitor.app import records
from monitor.app.banks import load_banks
from monitor.app.engine import Engine
from monitor.config.models import MatchingConfig, build_config
from monitor.evidence.export import export_incident
from monitor.evidence.records import FOLDED_TEXT, IMAGE_KEY
from monitor.evidence.store import EvidenceLog
from monitor.evidence.verify import verify
from monitor.runtime import analyses
from monitor.runtime.analyses import SampleImageMatcher, make_analyses
from monitor.runtime.messages import Sampled, SampleReport, SampleTiming
from monitor.runtime.worker_process import EventSender
from pipelines.base import Finding, Sample
from pipelines.known_content import KnownContentMatcher
from test_streams.images import known_image

T0 = 1_700_000_000.0


def _close(engine: Engine) -> None:
    engine._evidence_writer.shutdown(wait=True)
    engine.supervisor.stop_all()
    engine.outbox.close()
    assert engine.evidence is not None
    engine.evidence.close()
    engine.state_lock.release()


def _bodies(state: Path, store: bool, kind: str = "match") -> list[dict[str, Any]]:
    log = EvidenceLog(state / "evidence.sqlite", store_images=store)
    try:
        return [r.data() for r in log.records() if r.kind == kind]
    finally:
        log.close()


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many PNGs the matcher encoded."""
    calls: list[int] = []
    real = cv2.imencode

    def counting(ext: str, img: Any, *args: Any) -> Any:
        calls.append(1)
        return real(ext, img, *args)

    monkeypatch.setattr(analyses.cv2, "imencode", counting)
    yield calls


@pytest.mark.parametrize("store", [False, True])
def test_a_hash_match_holds_the_matched_sample_only_with_store_images(store: bool, bank_csv: Path, tmp_path: Path,
                                                                      encodes: list[int]) -> None:
    state = tmp_path / "state"
    cfg = build_config({"state_dir": str(state), "workers": 0, "banks": [{"name": "known", "path": str(bank_csv)}],
                        "evidence": {"store_images": store}})
    banks = load_banks(cfg)
    (matcher,) = make_analyses(cfg.analyses, banks, cfg.matching, cfg.evidence.store_images)
    assert isinstance(matcher, KnownContentMatcher) and isinstance(matcher, SampleImageMatcher) == store
    rgb = known_image(0)
    miss = matcher.process(Sample("cam", 0.5, T0, np.full_like(rgb, 128)))
    assert miss == [] and encodes == []  # no PNG for a sample that matched nothing
    findings = matcher.process(Sample("cam", 1.0, T0, rgb))
    assert findings and all(f.distance <= 31 for f in findings)  # strong: opens an incident at once
    assert len(encodes) == (1 if store else 0)  # once per matched sample, never with store_images off
    assert all((f.image_png is not None) == store for f in findings)
    engine = Engine(cfg, banks)
    sent: list[dict[str, Any]] = []
    engine.alert_listeners.append(sent.append)
    try:
        engine._handle_sample("cam", 1.0, findings, T0 + 1)
    finally:
        _close(engine)
    assert len(sent) == 1 and IMAGE_KEY not in sent[0]  # an alert never carries the picture
    (body,) = _bodies(state, store)
    assert body["entry_id"] == findings[0].entry_id
    assert (IMAGE_KEY in body) == store
    if store:
        png = np.frombuffer(base64.b64decode(body[IMAGE_KEY]), np.uint8)
        decoded = cv2.imdecode(png, cv2.IMREAD_COLOR)[:, :, ::-1]  # BGR back to the sample's RGB
        assert np.array_equal(decoded, rgb)  # the very sample, losslessly


def test_the_sample_image_crosses_the_worker_pipe(bank_csv: Path) -> None:
    """A worker process sends its findings pickled over its pipe (EventSender): the PNG goes with them."""
    cfg = build_config({"banks": [{"name": "known", "path": str(bank_csv)}], "evidence": {"store_images": True}})
    (matcher,) = make_analyses(cfg.analyses, load_banks(cfg), MatchingConfig(), True)
    findings = matcher.process(Sample("cam", 1.0, T0, known_image(1)))
    assert findings and findings[0].image_png is not None
    parent, child = multiprocessing.Pipe(duplex=False)
    sender = EventSender(child)
    sender.put(Sampled(SampleReport("cam", 1.0, T0), findings, SampleTiming(0.01, (("known_content", 0.01),), T0)))
    assert parent.poll(10), "the worker's message did not arrive"
    got = parent.recv()  # before close(): a PNG is larger than the pipe's buffer, so the send waits for a reader
    sender.close()
    assert isinstance(got, Sampled)
    assert [f.image_png for f in got.findings] == [f.image_png for f in findings]
    assert records.sample_image(got.findings[0]) == records.sample_image(findings[0])


def _weak(stream_id: str, t: float, entry: str = "e1") -> Finding:
    return Finding(pipeline="known_content", stream_id=stream_id, media_time_s=t, received_at=T0 + t, bank="known",
                   entry_id=entry, signal_type="pdq", distance=60, threshold=70, quality=90, sample_hash="ab" * 32)


def _weak_engine(state: Path, bank_csv: Path) -> Engine:
    cfg = build_config({"state_dir": str(state), "workers": 0, "banks": [{"name": "known", "path": str(bank_csv)}],
                        "incidents": {"confirm_k": 3, "confirm_n": 5, "confirm_window_s": 30}})
    return Engine(cfg, [])


def test_weak_matches_before_an_incident_are_linked_to_it_in_its_export(bank_csv: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine = _weak_engine(state, bank_csv)
    sent: list[dict[str, Any]] = []
    engine.alert_listeners.append(sent.append)
    try:
        engine._handle_sample("cam", 1.0, [_weak("cam", 1.0)], T0 + 1)
        engine._handle_sample("other", 1.5, [_weak("other", 1.5)], T0 + 1)  # the same entry on another stream
        engine._handle_sample("cam", 2.0, [], T0 + 2)  # a miss, counted toward n
        engine._handle_sample("cam", 3.0, [_weak("cam", 3.0), _weak("cam", 3.0, "e2")], T0 + 3)
        assert sent == []  # two of three: unconfirmed
        engine._handle_sample("cam", 4.0, [_weak("cam", 4.0)], T0 + 4)
        assert len(sent) == 1
    finally:
        _close(engine)
    assert engine.evidence_writer.unlinked_count() == (2, 2)  # e2 on cam and e1 on other, still waiting
    incident_id = sent[0]["incident_id"]
    log_path = state / "evidence.sqlite"
    (note,) = [b for b in _bodies(state, False, "note") if b.get("text") == FOLDED_TEXT]
    assert (note["bank"], note["entry_id"]) == ("known", "e1")
    assert [m["media_time_s"] for m in note["matches"]] == [1.0, 3.0]
    report = export_incident(log_path, incident_id)
    matches = report["matches"]
    assert [(m["stream_id"], m["media_time_s"], m["entry_id"]) for m in matches] == [
        ("cam", 1.0, "e1"), ("cam", 3.0, "e1"), ("cam", 4.0, "e1")]
    assert [m.get("link_verified") for m in matches] == [True, True, None]
    (note_item,) = [n for n in report["notes"] if n["details"].get("text") == FOLDED_TEXT]
    assert matches[0]["linked_by_seq"] == matches[1]["linked_by_seq"] == note_item["seq"]
    assert [m["record_hash"] for m in matches[:2]] == [m["record_hash"] for m in note["matches"]]
    assert report["stream"]["stream_ids"] == ["cam"]
    assert report["evidence"]["verification"]["ok"]
    assert verify(log_path).ok  # `monitor evidence verify` reads the same chain


def test_a_note_cannot_link_records_of_another_stream_or_unverified_ones(tmp_path: Path) -> None:
    log = EvidenceLog(tmp_path / "evidence.sqlite")
    try:
        match = {"media_time_s": 1.0, "bank": "known", "entry_id": "e1"}
        theirs = log.append("match", stream_id="other", body=match)
        ours = log.append("match", stream_id="cam", body=match)
        wrong_entry = log.append("match", stream_id="cam", body={**match, "entry_id": "e9"})
        log.append("incident", stream_id="cam", body={"status": "open"}, incident_id="inc-1")

        def note(*named: tuple[int, str]) -> dict[str, Any]:
            return {"text": FOLDED_TEXT, "bank": "known", "entry_id": "e1",
                    "matches": [{"seq": s, "record_hash": h, "media_time_s": 1.0} for s, h in named]}

        # Forged: names the other stream's record, our record under a wrong hash, and one of another entry.
        log.append("note", stream_id="cam", incident_id="inc-1",
                   body=note((theirs.seq, theirs.hash), (ours.seq, "0" * 64), (wrong_entry.seq, wrong_entry.hash)))
        # A note filed on the other stream under this incident links nothing, even with the true hash.
        log.append("note", stream_id="other", incident_id="inc-1", body=note((theirs.seq, theirs.hash)))
    finally:
        log.close()
    report = export_incident(tmp_path / "evidence.sqlite", "inc-1")
    assert [m["seq"] for m in report["matches"]] == [ours.seq, wrong_entry.seq]  # never the other stream's
    assert [m["link_verified"] for m in report["matches"]] == [False, False]
    assert report["stream"]["stream_ids"] == ["cam", "other"]  # the forged note itself stays in the report
    assert verify(tmp_path / "evidence.sqlite").ok


def test_unlinked_matches_are_bounded_and_a_clock_jump_starts_afresh(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "UNLINKED_KEYS", 4)
    monkeypatch.setattr(records, "UNLINKED_TOTAL", 6)
    log = EvidenceLog(tmp_path / "evidence.sqlite")
    writer = records.EvidenceWriter(log, None, 60.0, fold_max=3)
    try:
        for t in (1.0, 2.0, 3.0, 4.0, 5.0):
            writer.record("match", "cam", {"media_time_s": t}, unlinked=("cam", "b", "e"))
        writer.record("match", "cam", {"media_time_s": 9.0}, "inc-0", unlinked=("cam", "b", "x"))  # has an id
        writer.executor.submit(lambda: None).result()
        assert writer.unlinked_count() == (1, 3)  # the last fold_max of the key
        writer.record("match", "cam", {"media_time_s": 0.5}, unlinked=("cam", "b", "e"))  # publisher restarted
        writer.executor.submit(lambda: None).result()
        assert writer.unlinked_count() == (1, 1)
        for i in range(6):
            for t in (1.0, 2.0):
                writer.record("match", f"s{i}", {"media_time_s": t}, unlinked=(f"s{i}", "b", "e"))
        writer.executor.submit(lambda: None).result()
        assert writer.unlinked_count() == (3, 6)  # the total bound forgot the least recently matched keys
        writer.link_folded(("s5", "b", "e"), "inc-5", 1.0, 2.0)
        writer.link_folded(("s0", "b", "e"), "inc-0", 1.0, 2.0)  # forgotten: no note
        writer.link_folded(("s4", "b", "e"), "inc-4", 5.0, 6.0)  # none in its span: no note
        writer.executor.submit(lambda: None).result()
        assert writer.unlinked_count() == (1, 2)
    finally:
        writer.close()
        notes = [r for r in log.records() if r.kind == "note"]
        log.close()
    assert [(n.incident_id, len(n.data()["matches"])) for n in notes] == [("inc-5", 2)]
