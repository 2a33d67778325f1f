"""Classifier pipelines: config errors, budget and batching with a fake clock, the demonstration model, incidents
for classifications, the v2 alert schema and the dismissal feedback."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from monitor.common.errors import ConfigError
from monitor.config.models import MatchingConfig, build_config
from monitor.contracts.alerts import alert_schema, build_alert
from monitor.incidents import ClassifierPolicy, IncidentBook, IncidentPolicy, NewIncident, Suppressed
from monitor.runtime.analyses import make_analyses
from monitor.runtime.supervisor import Analysis
from monitor_tools.classifier_models import TESTCARD_LABELS, build_testcard_model, colour_bar_card
from pipelines.base import BatchedPipeline, Finding, Sample, SampleInfo
from pipelines.classifier import (
    Batcher,
    BatchSettings,
    BudgetSettings,
    ClassifierPipeline,
    Frame,
    LabelRule,
    Normalisation,
    SampleBudget,
    Scores,
    Waiting,
    to_scores,
)
from pipelines.known_content import KnownContentMatcher


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def testcard_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_testcard_model(tmp_path_factory.mktemp("models") / "testcard.onnx")


def onnx_entry(model_path: Path, **over: object) -> dict[str, object]:
    entry: dict[str, object] = {"kind": "onnx_classifier", "name": "testcard", "model": str(model_path),
                                "input_size": [64, 64],
                                "labels": [{"name": "testcard", "threshold": 0.6, "severity": "medium"},
                                           {"name": "other", "threshold": None}]}
    entry.update(over)
    return entry


def build(analyses: list[dict[str, object]]) -> list[object]:
    cfg = build_config({"analyses": analyses})
    return list(make_analyses(cfg.analyses, [], MatchingConfig()))


# -- registry and config --------------------------------------------------------------------------------------


def test_default_analyses_are_the_hash_matcher_alone() -> None:
    cfg = build_config({})
    assert [a.kind for a in cfg.analyses] == ["known_content"]
    built = make_analyses(cfg.analyses, [], MatchingConfig())
    assert len(built) == 1 and isinstance(built[0], KnownContentMatcher)


def test_analyses_are_built_by_kind(testcard_model: Path) -> None:
    built = build([{"kind": "known_content"}, onnx_entry(testcard_model)])
    assert isinstance(built[0], KnownContentMatcher)
    clf = built[1]
    assert isinstance(clf, ClassifierPipeline) and isinstance(clf, BatchedPipeline)
    assert clf.name == "testcard" and clf.model_id.startswith("sha256:") and len(clf.model_id) == 71
    clf.stop()


@pytest.mark.parametrize(("over", "expected"), [
    ({"model": "/nonexistent/m.onnx"}, "analyses[0] (testcard).model: no such file"),
    ({"input_size": [224, 224]}, "analyses[0] (testcard).input_size: [224, 224] does not fit the model's input"),
    ({"labels": [{"name": "testcard"}]}, "analyses[0] (testcard).labels: 1 labels configured, the model's output"),
    ({"layout": "nhwc"}, "analyses[0] (testcard).layout:"),
])
def test_model_config_errors_are_one_line_naming_the_field(testcard_model: Path, over: dict[str, object],
                                                            expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build([onnx_entry(testcard_model, **over)])
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_a_file_that_is_no_model_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"^analyses\[0\] \(testcard\)\.model: not a usable ONNX model"):
        build([onnx_entry(bad)])


@pytest.mark.parametrize(("entry", "field"), [
    ({"kind": "onnx_classifier", "name": "x", "model": "m.onnx", "input_size": [64, 64], "labels": []},
     "analyses.0.onnx_classifier.labels"),
    ({"kind": "onnx_classifier", "name": "x", "model": "m.onnx", "input_size": [64, 64],
      "labels": [{"name": "a"}, {"name": "a"}]}, "analyses.0.onnx_classifier.labels"),
    ({"kind": "onnx_classifier", "name": "x", "model": "m.onnx", "input_size": [64, 64], "labels": [{"name": "a"}],
      "incidents": {"confirm_k": 4, "confirm_n": 3}}, "analyses.0.onnx_classifier.incidents"),
    ({"kind": "service_classifier", "name": "x", "url": "http://svc/x", "model_id": "v1", "labels": [{"name": "a"}]},
     "analyses.0.service_classifier.url"),
    ({"kind": "magic"}, "analyses.0"),
])
def test_config_shape_errors_name_the_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"analyses": [entry]})
    assert f"config: {field}" in str(err.value), str(err.value)


# -- budget and batching with a fake clock ---------------------------------------------------------------------


def test_budget_takes_every_kth_sample_denser_for_new_streams_and_after_a_near_match() -> None:
    clock = Clock()
    b = SampleBudget(BudgetSettings(every_k=4, dense_every=1, new_stream_s=10, near_match_s=30), clock)
    assert [b.want("s") for _ in range(5)] == [True] * 5  # new: every sample
    clock.t += 10
    assert [b.want("s") for _ in range(8)] == [False, False, False, True, False, False, False, True]
    b.boost("s", 30)  # a near match
    assert [b.want("s") for _ in range(3)] == [True, True, True]
    clock.t += 31
    assert [b.want("s") for _ in range(4)] == [False, False, False, True]
    b.forget("s")
    assert b.want("s")  # a stream added again is new again


def test_batcher_flushes_at_b_samples_or_t_ms() -> None:
    bt: Batcher[int] = Batcher(3, 0.05)
    assert bt.wait_s(0.0) is None
    assert bt.add(1, 0.0) is None and bt.add(2, 0.01) is None
    assert bt.add(3, 0.02) == [1, 2, 3]  # full
    assert bt.add(4, 1.0) is None
    assert bt.wait_s(1.03) == pytest.approx(0.02)
    assert not bt.due(1.04) and bt.due(1.05)
    assert bt.flush() == [4] and bt.wait_s(2.0) is None


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("colour_order", ["rgb", "bgr"])
def test_normalisation_resizes_reorders_scales_and_lays_out(layout: str, colour_order: str) -> None:
    """A flat colour stays flat through the area resize, so each channel's value is (pixel * scale - mean) / std."""
    norm = Normalisation((6, 4), colour_order, layout, 2 / 255, (0.1, 0.2, 0.3), (0.5, 1.0, 2.0))
    frame = np.empty((9, 15, 3), np.uint8)
    frame[:] = (10, 100, 200)
    x = norm.apply(frame)
    assert x.dtype == np.float32 and (1, *x.shape) == norm.shape(1) == norm.blank(1).shape
    pixel = np.array([10, 100, 200] if colour_order == "rgb" else [200, 100, 10], np.float32)
    want = (pixel * np.float32(2 / 255) - np.array([0.1, 0.2, 0.3], np.float32)) / np.array([0.5, 1.0, 2.0], np.float32)
    per_channel = x.reshape(3, -1) if layout == "nchw" else x.reshape(-1, 3).T
    assert np.allclose(per_channel, want[:, None])
    assert norm.batch([frame, frame]).shape == norm.shape(2)
    assert norm.channels_height_width([1, 3, 4, 6] if layout == "nchw" else [1, 4, 6, 3]) == (3, 4, 6)


def test_outputs_become_scores() -> None:
    raw = np.array([[0.0, np.log(3.0)], [2.0, -2.0]], np.float32)
    assert np.array_equal(to_scores(raw, "probabilities"), raw)
    assert np.allclose(to_scores(raw, "logits_softmax")[0], [0.25, 0.75])
    assert np.allclose(to_scores(raw, "logits_sigmoid")[1], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))])


class CountingScorer:
    """Scores 'testcard' as the frame's mean brightness / 255; records batch sizes."""

    model_id = "sha256:" + "0" * 64
    labels = ("testcard", "other")

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.release = threading.Event()
        self.release.set()

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        self.release.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(len(frames))
        return [np.array([f.mean() / 255, 1 - f.mean() / 255], np.float32) for f in frames]

    def close(self) -> None:
        pass


RULES = [LabelRule("testcard", 0.6, "medium"), LabelRule("other", None)]


def sample(sid: str, t: float, value: int = 255) -> Sample:
    return Sample(sid, t, time.time(), np.full((36, 64, 3), value, np.uint8))


def test_stale_samples_are_dropped_and_counted_with_a_fake_clock() -> None:
    clock = Clock()
    clf = ClassifierPipeline("tc", CountingScorer(), RULES, BudgetSettings(every_k=1),
                             BatchSettings(batch_size=8, batch_wait_s=0.05, max_sample_age_s=5.0), clock)
    got: list[tuple[str, int]] = []
    clf._sink = lambda s, a, f, t: got.append((s.stream_id, len(f)))
    items = [Waiting(sample("a", 1.0), 1000.0), Waiting(sample("b", 1.0), 1004.0)]
    clock.t = 1006.0  # the first waited 6 s, the second 2 s
    clf.run_batch(items)
    assert got == [("b", 1)]
    assert clf.stats()["dropped_stale"] == 1 and clf.stats()["classified"] == 1


def test_a_slow_classifier_never_delays_the_hash_path_and_counts_what_it_drops() -> None:
    scorer = CountingScorer()
    scorer.release.clear()  # the model is stuck
    clf = ClassifierPipeline("tc", scorer, RULES, BudgetSettings(every_k=1),
                             BatchSettings(batch_size=4, batch_wait_s=0.01, queue_size=8))
    results: list[SampleInfo] = []
    clf.start(lambda s, a, f, t: results.append(s))

    class Sink:
        def __init__(self) -> None:
            self.samples = 0

        def on_state(self, change: object) -> None:
            pass

        def on_sample(self, *args: object) -> None:
            self.samples += 1

    sink = Sink()
    analysis = Analysis(None, [clf], sink, 0)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for i in range(200):
        analysis.process(sample(f"s{i % 10}", i / 10), 0.0)
    elapsed = time.perf_counter() - t0
    assert sink.samples == 200 and elapsed < 1.0  # the hash path went on while the classifier was stuck
    st = clf.stats()
    assert st["dropped_full"] >= 200 - 8 - 4 - 1, st
    scorer.release.set()
    clf.stop()
    assert clf.stats()["classified"] >= 1


def test_batches_span_the_streams_of_a_worker() -> None:
    scorer = CountingScorer(delay_s=0.05)
    clf = ClassifierPipeline("tc", scorer, RULES, BudgetSettings(every_k=1),
                             BatchSettings(batch_size=8, batch_wait_s=0.2, queue_size=64))
    seen: list[str] = []
    clf.start(lambda s, a, f, t: seen.append(s.stream_id))
    for i in range(16):
        clf.offer(sample(f"s{i}", 1.0))
    deadline = time.monotonic() + 5
    while len(seen) < 16 and time.monotonic() < deadline:
        time.sleep(0.01)
    clf.stop()
    assert sorted(seen) == sorted(f"s{i}" for i in range(16))
    assert max(scorer.batches) == 8 and len(scorer.batches) <= 3, scorer.batches


# -- the demonstration model ----------------------------------------------------------------------------------


def test_testcard_model_scores_the_card_and_not_other_pictures(testcard_model: Path) -> None:
    (clf,) = build([onnx_entry(testcard_model)])
    assert isinstance(clf, ClassifierPipeline)
    rng = np.random.default_rng(1)
    card = colour_bar_card(512, 288)
    half = card.copy()
    half[:, 256:] = rng.integers(0, 255, (288, 256, 3), dtype=np.uint8)
    found = clf.process(Sample("s", 1.0, 0.0, card))
    assert [(f.kind, f.label, f.severity) for f in found] == [("classification", "testcard", "medium")]
    assert found[0].score is not None and found[0].score > 0.95
    assert found[0].model_id == clf.model_id and len(found[0].sample_hash) == 64
    assert clf.process(Sample("s", 2.0, 0.0, half)) == []  # half the picture: ~0.5, under 0.6
    for pic in (rng.integers(0, 255, (288, 512, 3), dtype=np.uint8), np.zeros((288, 512, 3), np.uint8)):
        assert clf.process(Sample("s", 3.0, 0.0, pic)) == []
    assert clf.scorer.labels == TESTCARD_LABELS
    clf.stop()


# -- incidents and alerts for classifications -----------------------------------------------------------------


def cfinding(stream: str, t: float, score: float = 0.9, label: str = "testcard") -> Finding:
    return Finding("tc", stream, t, T0, "tc", label, "classifier", 0, 0, 80, "ab" * 32, label,
                   kind="classification", label=label, score=score, score_threshold=0.6,
                   model_id="sha256:" + "1" * 64, severity="medium")


T0 = 1_700_000_000.0


def test_classification_incident_needs_k_of_n_within_the_window() -> None:
    clock = Clock(T0)
    book = IncidentBook(IncidentPolicy(), {}, clock, classifiers={"tc": ClassifierPolicy(3, 5, 20.0)})
    events = []
    for i, hit in enumerate([True, False, True, False]):
        events += book.on_classified("s", "tc", float(i), [cfinding("s", float(i))] if hit else [])
    assert all(isinstance(e, Suppressed) and e.why == "unconfirmed" for e in events) and len(events) == 2
    opened = book.on_classified("s", "tc", 4.0, [cfinding("s", 4.0, 0.95)])
    assert len(opened) == 1 and isinstance(opened[0], NewIncident)
    inc = opened[0].incident
    assert (inc.kind, inc.bank, inc.entry_id, inc.severity, inc.samples) == ("classification", "tc", "testcard",
                                                                              "medium", 3)
    msg = inc.to_message("n", "u")
    assert msg["kind"] == "classification" and msg["label"] == "testcard" and msg["best_score"] == 0.95
    assert msg["best_distance"] is None and msg["model_id"] == "sha256:" + "1" * 64
    assert book.on_classified("s", "tc", 5.0, [cfinding("s", 5.0)]) == []  # absorbed, no new alert
    # Far apart in media time, hits do not add up.
    assert all(isinstance(e, Suppressed) for t in (0.0, 30.0, 60.0)
               for e in book.on_classified("t", "tc", t, [cfinding("t", t)]))
    # Hash confirmation windows are untouched by classifications.
    assert book._windows == {}


def test_classification_alert_validates_against_schema_v2() -> None:
    v = jsonschema.Draft202012Validator(alert_schema(), format_checker=jsonschema.FormatChecker())
    alert = build_alert(cfinding("s", 1.0), node="n", stream_url="u", observed_at=T0)
    v.validate(alert)
    assert (alert["schema_version"], alert["kind"], alert["label"], alert["score"]) == (2, "classification",
                                                                                     "testcard", 0.9)
    assert alert["distance"] is None and alert["signal_type"] == "classifier"
    assert list(v.iter_errors({**alert, "score": None}))  # a classification must carry its score
    match = build_alert(Finding("known_content", "s", 1.0, T0, "b", "1", "pdq", 3, 31, 90, "ab" * 32), node="n",
                        stream_url="u", observed_at=T0)
    v.validate(match)
    assert match["kind"] == "match" and match["label"] is None
    assert list(v.iter_errors({**match, "distance": None}))  # a match keeps its distance


def test_monitor_run_refuses_a_model_that_does_not_fit_in_one_line(testcard_model: Path, tmp_path: Path) -> None:
    import yaml

    from tests.conftest import run_cli

    for over, field in (({"model": "missing.onnx"}, "model"), ({"input_size": [32, 32]}, "input_size"),
                        ({"labels": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "labels")):
        entry = onnx_entry(testcard_model, **over)
        cfg = tmp_path / "monitor.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "analyses": [entry]}))
        r = run_cli("run", "--config", str(cfg), "--validate-config")
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"analyses[0] (testcard).{field}: " in lines[0], lines[0]
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "analyses": [onnx_entry(testcard_model)]}))
    r = run_cli("run", "--config", str(cfg), "--validate-config")
    assert r.returncode == 0, r.stderr


def test_with_store_images_the_evidence_and_the_feedback_carry_the_sample(testcard_model: Path,
                                                                          tmp_path: Path) -> None:
    import base64
    import json
    import uuid

    from monitor.app.engine import Engine
    from monitor.evidence.store import EvidenceLog

    entry = onnx_entry(testcard_model, incidents={"confirm_k": 2, "confirm_n": 3, "window_s": 10})
    for store in (False, True):
        state = tmp_path / f"state-{store}"
        cfg = build_config({"state_dir": str(state), "workers": 0, "analyses": [entry],
                            "evidence": {"store_images": store}})
        (clf,) = make_analyses(cfg.analyses, [], MatchingConfig(), store_images=store)
        assert isinstance(clf, ClassifierPipeline)
        found = [clf.process(Sample("cam", t, T0, colour_bar_card(512, 288))) for t in (1.0, 2.0)]
        clf.stop()
        assert all((f[0].image_png is not None) == store for f in found)
        engine = Engine(cfg, [])
        try:
            sent: list[dict[str, object]] = []
            engine.alert_listeners.append(sent.append)
            for t, f in zip((1.0, 2.0), found, strict=True):
                engine._handle_classified(SampleInfo("cam", t, T0), "testcard", f, T0 + t)
            assert len(sent) == 1 and "image_png_b64" not in sent[0]  # an alert never carries the picture
            engine.handle_command({"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()),
                                   "action": "dismiss", "incident_id": sent[0]["incident_id"],
                                   "moderator": "dana", "reason": "test card"})
        finally:
            engine._evidence_writer.shutdown(wait=True)
            engine.supervisor.stop_all()
            engine.outbox.close()
            assert engine.evidence is not None
            engine.evidence.close()
            engine.state_lock.release()
        feedback = json.loads((state / "classifier-feedback.jsonl").read_text())
        assert feedback["moderator"] == "dana" and feedback["label"] == "testcard"
        assert ("image_png_b64" in feedback) == store
        if store:
            assert base64.b64decode(feedback["image_png_b64"]).startswith(b"\x89PNG")
        log = EvidenceLog(state / "evidence.sqlite", store_images=store)
        try:
            bodies = [r.data() for r in log.records() if r.kind == "match"]
        finally:
            log.close()
        assert len(bodies) == 2 and all(("image_png_b64" in b) == store for b in bodies)
