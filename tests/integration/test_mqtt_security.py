"""Against a real Mosquitto with the shipped ACL: passwords, TLS with a CA file, per-node topic rights."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from monitor.common.errors import BrokerError
from monitor.config.models import BrokerConfig
from monitor.delivery.connection import make_client, negotiate_protocol
from test_streams.infra import Mosquitto, free_port
from tests.conftest import require_tools

pytestmark = pytest.mark.realinfra

ACL = Path(__file__).resolve().parents[2] / "configs" / "mosquitto.acl"
USERS = {"node-1": "pw-node-1", "node-2": "pw-node-2", "console": "pw-console"}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Path]]:
    require_tools()
    # Not under pytest's 0700 tmp: mosquitto, started as root, reads these files as user mosquitto.
    d = Path(tempfile.mkdtemp(prefix="mqtt-tls-"))
    d.chmod(0o755)
    acl = d / "livesafe.acl"
    shutil.copy(ACL, acl)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"), "-out", str(d / "server.pem"))
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True)
    for f in d.iterdir():
        f.chmod(0o644)  # mosquitto drops to its own user when started as root
    tls_port = free_port()
    m = Mosquitto(allow_anonymous=False, extra_conf=(
        f"per_listener_settings false\npassword_file {passwd}\nacl_file {acl}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
        f"keyfile {d / 'server.key'}\n"))
    m.start()
    m.tls_port = tls_port  # type: ignore[attr-defined]
    yield m, d / "ca.pem"
    m.close()
    shutil.rmtree(d, ignore_errors=True)


def cfg(m: Mosquitto, user: str, pw: str, *, tls: bool = False, ca: Path | None = None) -> BrokerConfig:
    port = m.tls_port if tls else m.port  # type: ignore[attr-defined]
    return BrokerConfig(url=f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{port}", username=user, password=pw,
                        ca_file=ca, connect_timeout_s=5)


def test_wrong_password_is_refused(secure_broker: tuple[Mosquitto, Path]) -> None:
    m, _ = secure_broker
    with pytest.raises(BrokerError, match="not authorised"):
        asyncio.run(negotiate_protocol(cfg(m, "node-1", "wrong"), "t1"))
    with pytest.raises(BrokerError, match="not authorised"):
        asyncio.run(negotiate_protocol(BrokerConfig(url=m.url), "t2"))  # anonymous


def test_tls_needs_the_ca_file(secure_broker: tuple[Mosquitto, Path]) -> None:
    m, ca = secure_broker
    assert asyncio.run(negotiate_protocol(cfg(m, "node-1", USERS["node-1"], tls=True, ca=ca), "t3"))
    with pytest.raises(BrokerError, match="TLS certificate not trusted"):
        asyncio.run(negotiate_protocol(cfg(m, "node-1", USERS["node-1"], tls=True), "t4"))


async def _received(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    """Everything delivered to `client` within `seconds` (a refused publish is simply never delivered)."""
    out: list[aiomqtt.Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(await asyncio.wait_for(anext(aiter(client.messages)), 0.5))
        except TimeoutError:
            continue
    return out


async def _acl_scenario(m: Mosquitto) -> list[str]:
    got: list[str] = []
    console = cfg(m, "console", USERS["console"])
    node1 = cfg(m, "node-1", USERS["node-1"])
    async with make_client(console, "console-acl", aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("livesafe/#", qos=1)  # only what the ACL lets it read is delivered
        async with make_client(node1, "node-1-acl", aiomqtt.ProtocolVersion.V5) as pub:
            await pub.publish("livesafe/node-1/alerts/s1", b"own", qos=1)
            await pub.publish("livesafe/node-2/alerts/s1", b"forged", qos=1)  # another node's topic
            await pub.publish("livesafe/node-1/commands", b"node-1 writes a command", qos=1)
        async with make_client(console, "console-pub", aiomqtt.ProtocolVersion.V5) as con:
            await con.publish("livesafe/node-1/alerts/s1", b"console forging an alert", qos=1)
            await con.publish("livesafe/node-1/commands", b"command", qos=1)
        got += [f"{msg.topic} {msg.payload!r}" for msg in await _received(sub, 3.0)]
    return got


def test_acl_node_writes_only_its_own_topics_console_reads_alerts_writes_commands(
    secure_broker: tuple[Mosquitto, Path],
) -> None:
    m, _ = secure_broker
    got = asyncio.run(_acl_scenario(m))
    assert "livesafe/node-1/alerts/s1 b'own'" in got
    assert not any("forged" in g for g in got), got
    assert not any("console forging" in g for g in got), got
    # The console may not read commands either (they are for the node); the node may: checked via a node sub.
    assert not any("/commands" in g for g in got), got


async def _node_reads_command(m: Mosquitto) -> list[bytes]:
    out: list[bytes] = []
    async with make_client(cfg(m, "node-1", USERS["node-1"]), "n1-cmd", aiomqtt.ProtocolVersion.V5) as node:
        await node.subscribe("livesafe/node-1/commands", qos=1)
        await node.subscribe("livesafe/node-2/commands", qos=1)
        async with make_client(cfg(m, "console", USERS["console"]), "c-cmd", aiomqtt.ProtocolVersion.V5) as con:
            await con.publish("livesafe/node-1/commands", b"for node-1", qos=1)
            await con.publish("livesafe/node-2/commands", b"for node-2", qos=1)
        out += [bytes(msg.payload) for msg in await _received(node, 3.0)]  # type: ignore[arg-type]
    return out


def test_node_reads_only_its_own_commands(secure_broker: tuple[Mosquitto, Path]) -> None:
    m, _ = secure_broker
    assert asyncio.run(_node_reads_command(m)) == [b"for node-1"]
