from __future__ import annotations

import random
import time

import jsonschema
import pytest

from monitor.common.backoff import backoff_delay
from monitor.contracts.alerts import alert_schema, build_alert
from pipelines.base import Finding


def finding(t: float = 12.5, stream: str = "s1", entry: str = "3") -> Finding:
    return Finding("known_content", stream, t, time.time(), "bank1", entry, "pdq", 4, 31, 90, "ab" * 32, "lbl", ("x",))


def test_alert_matches_the_shipped_schema() -> None:
    alert = build_alert(finding(), node="n1", stream_url="rtmp://h/live/s1", observed_at=time.time())
    jsonschema.Draft202012Validator(alert_schema(), format_checker=jsonschema.FormatChecker()).validate(alert)
    assert alert["observed_at"].endswith("Z") and alert["media_time_s"] == 12.5


def test_schema_rejects_missing_and_extra_fields() -> None:
    alert = build_alert(finding(), node="n1", stream_url="u", observed_at=time.time())
    v = jsonschema.Draft202012Validator(alert_schema())
    assert not list(v.iter_errors(alert))
    assert list(v.iter_errors({k: x for k, x in alert.items() if k != "entry_id"}))
    assert list(v.iter_errors({**alert, "surprise": 1}))


def test_alert_ids_are_unique() -> None:
    ids = {build_alert(finding(), node="n", stream_url="u", observed_at=0)["alert_id"] for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize("attempt", range(1, 10))
def test_backoff_is_exponential_with_jitter_and_capped(attempt: int) -> None:
    rng = random.Random(attempt)
    base = min(8.0, 0.5 * 2 ** (attempt - 1))
    for _ in range(50):
        d = backoff_delay(attempt, 0.5, 8.0, rng)
        assert base * 0.5 <= d <= base
