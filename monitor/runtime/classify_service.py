"""Classification services over HTTPS: a Scorer (pipelines/classifier/scorer.py) that posts each sample as a JPEG.

The sample is encoded to JPEG in memory (never written to disk) and posted to the one configured endpoint, with
the auth header read from a file; at most `max_concurrency` requests are in flight, each within `timeout_s`.
After `breaker_failures` failures in a row the circuit opens: samples are not sent for `breaker_reset_s`, then
one trial request decides. The JSON answer is mapped to the configured labels: `scores_field` (a dotted path)
holds {label: score} or [{"label": ..., "score": ...}], service labels renamed by `label_map`; a configured
label the answer lacks scores 0. A sample that could not be scored is counted (ClassifierStats.failed), never
retried. Requests run on an event loop of the adapter's own thread.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from monitor.config.models import ServiceClassifierConfig
from pipelines.classifier import Frame, ModelError, ScorerFigures, Scores

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Closed, open for `reset_s` after `failures` in a row, then half-open: one trial request."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.in_a_row = 0
        self.opened_at: float | None = None
        self.trial = False
        self.opened_total = 0
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.clock() - self.opened_at < self.reset_s or self.trial:
                return False
            self.trial = True  # one request tries whether the service is back
            return True

    def success(self) -> None:
        with self._lock:
            self.in_a_row, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.in_a_row += 1
            if self.trial or (self.opened_at is None and self.in_a_row >= self.failures):
                self.opened_at = self.clock()
                self.opened_total += 1
            self.trial = False


def encode_jpeg(frame: Frame, quality: int, max_side: int) -> bytes:
    """The sample as JPEG bytes, in memory."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def map_scores(answer: object, field: str, labels: Sequence[str], label_map: dict[str, str]) -> Scores:
    """The answer's scores in label order; raises ValueError for an answer of another shape."""
    node = answer
    for part in field.split(".") if field else []:
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"the answer has no {field!r}")
        node = node[part]
    pairs: list[tuple[object, object]]
    if isinstance(node, dict):
        pairs = list(node.items())
    elif isinstance(node, list) and all(isinstance(x, dict) for x in node):
        pairs = [(x.get("label"), x.get("score")) for x in node]
    else:
        raise ValueError(f"{field!r} is neither {{label: score}} nor [{{label, score}}]")
    index = {name: i for i, name in enumerate(labels)}
    out = np.zeros(len(labels), np.float32)
    for name, score in pairs:
        if not isinstance(name, str) or isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError(f"{field!r} holds a pair that is not label and number")
        i = index.get(label_map.get(name, name))
        if i is not None:
            out[i] = min(1.0, max(0.0, float(score)))
    return out


class ServiceScorer:
    """Scores samples by posting them to the configured HTTPS endpoint (ServiceClassifierConfig)."""

    def __init__(self, cfg: ServiceClassifierConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.model_id = cfg.model_id
        self.labels = tuple(x.name for x in cfg.labels)
        unknown = sorted(set(cfg.label_map.values()) - set(self.labels))
        if unknown:
            raise ModelError("label_map", f"maps to labels that are not configured: {', '.join(unknown)}")
        self.headers: dict[str, str] = {}
        if cfg.auth_file is not None:
            try:
                secret = cfg.auth_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ModelError("auth_file", f"cannot read {cfg.auth_file}: {exc.strerror}") from None
            if not secret or any(c in secret for c in "\r\n"):
                raise ModelError("auth_file", f"{cfg.auth_file} must hold one non-empty line")
            self.headers[cfg.auth_header] = secret
        try:
            self.ssl = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ModelError("ca_file", f"cannot load {cfg.ca_file}: {exc}") from None
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s, clock)
        self.errors: dict[str, int] = {}  # by kind: timeout, http_503, tls, connect, answer, circuit_open
        self._errors_lock = threading.Lock()  # counted on the adapter's loop, read by the classifier's stats
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="classify-service", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(cfg.max_concurrency)

    def _count(self, kind: str) -> None:
        with self._errors_lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def figures(self) -> ScorerFigures:
        """The circuit and the errors by kind, for the classifier's stats (monitor/ops/classifier_metrics.py)."""
        with self._errors_lock:
            errors = dict(self.errors)
        return {"service": {"circuit": self.breaker.state, "circuit_opened": self.breaker.opened_total,
                            "errors": errors}}

    async def _session_(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=self.cfg.max_concurrency))
        return self._session

    async def _one(self, jpeg: bytes) -> Scores | None:
        import aiohttp

        if not self.breaker.allow():
            self._count("circuit_open")
            return None
        async with self._limit:
            session = await self._session_()
            try:
                async with session.post(self.cfg.url, data=jpeg,
                                        headers={**self.headers, "Content-Type": "image/jpeg"}) as resp:
                    if resp.status != 200:
                        self._count(f"http_{resp.status}")
                        self.breaker.failure()
                        return None
                    answer = await resp.json(content_type=None)
                scores = map_scores(answer, self.cfg.scores_field, self.labels, self.cfg.label_map)
            except TimeoutError:
                self._count("timeout")
            except aiohttp.ClientConnectorCertificateError:
                self._count("tls")
            except aiohttp.ClientSSLError:
                self._count("tls")
            except aiohttp.ClientError:
                self._count("connect")
            except ValueError:
                self._count("answer")
            else:
                self.breaker.success()
                return scores
            self.breaker.failure()
            return None

    async def _all(self, frames: Sequence[Frame]) -> list[Scores | None]:
        jpegs = [encode_jpeg(f, self.cfg.jpeg_quality, self.cfg.max_side) for f in frames]
        return list(await asyncio.gather(*(self._one(j) for j in jpegs)))

    def score(self, frames: Sequence[Frame]) -> list[Scores | None]:
        if not frames:
            return []
        fut = asyncio.run_coroutine_threadsafe(self._all(frames), self._loop)
        return fut.result()

    def close(self) -> None:
        async def shut() -> None:
            if self._session is not None:
                await self._session.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()
