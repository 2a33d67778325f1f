"""The HTTPS classification-service adapter against a real local aiohttp server over TLS (a self-signed
certificate made here): scores mapped by config, auth header from a file, JPEG in memory, timeout, 5xx, circuit
open, bounded concurrency, and a server whose certificate is not the configured CA's refused."""

from __future__ import annotations

import asyncio
import datetime
import io
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from monitor.common.errors import ConfigError
from monitor.config.models import MatchingConfig, ServiceClassifierConfig, build_config
from monitor.runtime.analyses import make_analyses
from monitor.runtime.classify_service import CircuitBreaker, ServiceScorer, map_scores
from pipelines.base import Sample
from pipelines.classifier import ClassifierPipeline
from test_streams.broker import free_port


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Service:
    """What the test server does and saw."""

    port: int
    mode: str = "ok"  # ok, slow, error
    delay_s: float = 0.0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth: list[str | None] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/v1/classify"


def serve(cert: Path, key: Path) -> Iterator[Service]:
    svc = Service(free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def classify(request: web.Request) -> web.Response:
        svc.requests += 1
        svc.in_flight += 1
        svc.max_in_flight = max(svc.max_in_flight, svc.in_flight)
        try:
            svc.auth.append(request.headers.get("X-Api-Key"))
            body = await request.read()
            svc.bodies.append(body)
            if svc.delay_s:
                await asyncio.sleep(svc.delay_s)
            if svc.mode == "error":
                return web.Response(status=503, text="overloaded")
            mean = float(np.asarray(Image.open(io.BytesIO(body))).mean()) / 255
            return web.json_response({"result": {"scores": [{"label": "bars", "score": mean},
                                                            {"label": "unrelated", "score": 0.3}]}})
        finally:
            svc.in_flight -= 1

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/classify", classify)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        await web.TCPSite(runner, "127.0.0.1", svc.port, ssl_context=ctx).start()
        runner_box.append(runner)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield svc
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = make_cert(folder, "service")
    other, _ = make_cert(folder, "other")
    token = folder / "token"
    token.write_text("secret-token-1\n")
    return {"cert": cert, "key": key, "other_ca": other, "token": token}


@pytest.fixture
def service(certs: dict[str, Path]) -> Iterator[Service]:
    yield from serve(certs["cert"], certs["key"])


def entry(svc: Service, certs: dict[str, Path], **over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "kind": "service_classifier", "name": "vendor", "url": svc.url, "model_id": "vendor-bars-v3",
        "ca_file": str(certs["cert"]), "auth_header": "X-Api-Key", "auth_file": str(certs["token"]),
        "timeout_s": 2.0, "max_concurrency": 2, "breaker_failures": 3, "breaker_reset_s": 60,
        "scores_field": "result.scores", "label_map": {"bars": "bright"},
        "labels": [{"name": "bright", "threshold": 0.6, "severity": "low"}],
    }
    e.update(over)
    return e


def scorer(svc: Service, certs: dict[str, Path], **over: object) -> ServiceScorer:
    cfg = build_config({"analyses": [entry(svc, certs, **over)]}).analyses[0]
    assert isinstance(cfg, ServiceClassifierConfig)
    return ServiceScorer(cfg)


WHITE = np.full((288, 512, 3), 250, np.uint8)
BLACK = np.zeros((288, 512, 3), np.uint8)


def test_scores_are_mapped_and_the_auth_header_comes_from_the_file(service: Service,
                                                                   certs: dict[str, Path]) -> None:
    (clf,) = make_analyses(build_config({"analyses": [entry(service, certs)]}).analyses, [], MatchingConfig())
    assert isinstance(clf, ClassifierPipeline)
    found = clf.process(Sample("s", 1.0, 0.0, WHITE))
    assert [(f.label, f.model_id, f.severity) for f in found] == [("bright", "vendor-bars-v3", "low")]
    assert found[0].score is not None and found[0].score > 0.9
    assert clf.process(Sample("s", 2.0, 0.0, BLACK)) == []
    assert service.auth == ["secret-token-1", "secret-token-1"]
    img = Image.open(io.BytesIO(service.bodies[0]))
    assert img.format == "JPEG" and max(img.size) == 512
    clf.stop()


def test_bounded_concurrency(service: Service, certs: dict[str, Path]) -> None:
    service.delay_s = 0.2
    s = scorer(service, certs)
    rows = s.score([WHITE] * 6)
    assert all(r is not None for r in rows) and service.requests == 6
    assert service.max_in_flight == 2
    s.close()


def test_timeout_is_counted_and_the_sample_skipped(service: Service, certs: dict[str, Path]) -> None:
    service.delay_s = 1.5
    s = scorer(service, certs, timeout_s=0.3)
    assert s.score([WHITE]) == [None]
    assert s.errors == {"timeout": 1}
    s.close()


def test_5xx_opens_the_circuit_which_then_sends_nothing(service: Service, certs: dict[str, Path]) -> None:
    service.mode = "error"
    s = scorer(service, certs, max_concurrency=1)
    assert s.score([WHITE] * 3) == [None] * 3
    assert s.errors == {"http_503": 3} and s.breaker.state == "open"
    assert s.score([WHITE] * 4) == [None] * 4
    assert service.requests == 3  # open: nothing was sent
    assert s.errors["circuit_open"] == 4
    s.close()


def test_circuit_half_opens_after_the_reset_and_closes_on_success() -> None:
    t = [0.0]
    b = CircuitBreaker(2, 10.0, lambda: t[0])
    b.failure()
    assert b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    t[0] = 10.0
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial at a time
    b.failure()  # the trial failed: open again
    assert b.state == "open" and not b.allow()
    t[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_certificate_not_from_the_configured_ca_is_refused(service: Service, certs: dict[str, Path]) -> None:
    s = scorer(service, certs, ca_file=str(certs["other_ca"]))
    assert s.score([WHITE]) == [None]
    assert s.errors == {"tls": 1}
    assert service.bodies == []  # nothing reached the server's handler
    s.close()
    s = scorer(service, certs, ca_file=None)  # the system's CAs do not know a self-signed certificate either
    assert s.score([WHITE]) == [None] and s.errors == {"tls": 1}
    s.close()


def test_answers_of_another_shape_count_as_failures() -> None:
    assert map_scores({"scores": {"a": 0.5, "zzz": 1}}, "scores", ["a", "b"], {}).tolist() == [0.5, 0.0]
    for bad in ({"other": 1}, {"scores": "x"}, {"scores": {"a": "high"}}):
        with pytest.raises(ValueError):
            map_scores(bad, "scores", ["a"], {})


def test_service_config_errors_name_the_field(tmp_path: Path, certs: dict[str, Path]) -> None:
    svc = Service(443)
    with pytest.raises(ConfigError, match=r"^analyses\[0\] \(vendor\)\.auth_file: cannot read"):
        make_analyses(build_config({"analyses": [entry(svc, certs, auth_file=str(tmp_path / "none"))]}).analyses,
                      [], MatchingConfig())
    with pytest.raises(ConfigError, match=r"^analyses\[0\] \(vendor\)\.label_map: maps to labels that are not"):
        make_analyses(build_config({"analyses": [entry(svc, certs, label_map={"x": "nope"})]}).analyses, [],
                      MatchingConfig())


def test_the_pipeline_reports_the_services_circuit_and_errors(service: Service, certs: dict[str, Path]) -> None:
    """What monitor/ops/classifier_metrics.py renders as monitor_classifier_circuit and _service_errors_total."""
    from pipelines.classifier import BatchSettings, BudgetSettings, LabelRule

    service.mode = "error"
    s = scorer(service, certs, max_concurrency=1)
    clf = ClassifierPipeline("vendor", s, [LabelRule("bright", 0.6, "low")], BudgetSettings(), BatchSettings())
    assert clf.stats()["service"] == {"circuit": "closed", "circuit_opened": 0, "errors": {}}
    clf.process(Sample("s", 0.0, 0.0, WHITE))
    for _ in range(3):
        s.score([WHITE])
    st = clf.stats()
    assert st["service"] == {"circuit": "open", "circuit_opened": 1, "errors": {"http_503": 3, "circuit_open": 1}}
    assert st["model_id"] == "vendor-bars-v3" and "providers" not in st
    clf.stop()
