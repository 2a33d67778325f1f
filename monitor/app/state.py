"""The node's state directory, opened once: its lock, the outbox, the evidence log and its signing key.

The directory is private (0700: it holds publisher addresses and moderator names) and locked, so a second
monitor on the same state stops at once. A store that cannot be opened is a UserError naming it, with the lock
released.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from monitor.common.errors import UserError
from monitor.common.statefiles import StateLock, private_dir
from monitor.config.models import MonitorConfig
from monitor.delivery.outbox import Outbox, OutboxError
from monitor.evidence.signing import KeyFileError, load_signing_key
from monitor.evidence.store import EvidenceError, EvidenceLog


@dataclass(frozen=True, slots=True)
class NodeState:
    lock: StateLock
    outbox: Outbox
    evidence: EvidenceLog | None  # None with evidence.enabled off
    head_key: Ed25519PrivateKey | None  # None: heads are not signed


def open_state(cfg: MonitorConfig) -> NodeState:
    private_dir(cfg.state_dir)  # 0700: it holds publisher addresses and moderator names
    lock = StateLock.acquire(cfg.state_dir)  # a second monitor on this state stops here
    try:
        outbox = Outbox.open_recovering(cfg.state_dir / "outbox.sqlite", max_bytes=cfg.delivery.outbox_max_mb * 2**20)
        evidence = (EvidenceLog(cfg.state_dir / "evidence.sqlite", store_images=cfg.evidence.store_images)
                    if cfg.evidence.enabled else None)
        key_file = cfg.evidence.signing_key_file
        head_key = (load_signing_key(key_file, state_dir=cfg.state_dir)
                    if evidence is not None and key_file is not None else None)
    except (OutboxError, EvidenceError, KeyFileError) as exc:
        lock.release()
        raise UserError(f"cannot open the monitor's state: {exc}") from None
    return NodeState(lock, outbox, evidence, head_key)
