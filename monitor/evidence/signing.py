"""Signed heads: the Ed25519 key files, the bytes a head signs, and the check of one head.

The hash chain alone (monitor/evidence/records.py) is keyless: someone with write access who edits a
record and recomputes every later hash (or truncates the log and rewrites the head) produces a file whose
chain verifies. So the monitor signs: every `evidence.head_interval_s` (and at start and stop) it appends
a `head` record whose body is the count, last seq and last hash before it, the signing time and interval,
and the key's id and raw public key, signed with Ed25519 (`EvidenceLog.sign_head`, body made by
`signed_head_body`; the bytes signed are `head_message`). The key lives outside the state directory
(`evidence.signing_key_file`, made by `monitor evidence keygen`); the monitor publishes each signed head to
a retained MQTT topic and logs it. `verify(..., public_key=...)` (`monitor evidence verify --pubkey FILE`,
monitor/evidence/verify.py) then fails a recomputed chain three ways: a kept head's signed hash no longer
matches the chain before it; a head re-signed without the key fails its signature; removed heads leave
records that run more than two signing intervals past the last valid head (or no valid head at all).

Limits:
  * Whoever holds the signing key (root, or the monitor's own user, on the monitor host) can re-sign
    a rewritten log. The published heads (MQTT, retained; pass them as `anchors=[(seq, hash)]`) are
    what that person cannot recall once a subscriber has stored them.
  * Records appended after the last signed head can be rewritten or dropped by someone with write
    access within one signing interval, and their times squeezed into it.

Head body: count, last_seq, last_hash, signed_at, interval_s, key_id, public_key, signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from monitor.common.errors import UserError
from monitor.evidence.records import EvidenceHead, canonical_json

__all__ = [
    "HEAD_FORMAT",
    "SIGNED_FIELDS",
    "KeyFileError",
    "generate_signing_key",
    "head_message",
    "head_problem",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "public_key_pem",
    "raw_b64",
    "signed_head_body",
]

HEAD_FORMAT = "lsev-head-1"
SIGNED_FIELDS = ("count", "last_seq", "last_hash", "signed_at", "interval_s", "key_id", "public_key")


class KeyFileError(UserError):
    """A signing or public key file cannot be made, read or used; the message names the file."""


def raw_b64(public: Ed25519PublicKey) -> str:
    """The 32 raw bytes of a public key in base64, as a head's `public_key` carries them."""
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def public_key_pem(public: Ed25519PublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM (the `.pub` file `generate_signing_key` writes)."""
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def head_message(claims: Mapping[str, Any]) -> bytes:
    """The bytes a head's signature covers: canonical JSON of its claims and the format name.

    Reimplementable: `{"count", "format": "lsev-head-1", "interval_s", "key_id", "last_hash", "last_seq",
    "public_key", "signed_at"}` with sorted keys, no spaces, UTF-8; the signature is Ed25519, base64.
    """
    return canonical_json({**{k: claims[k] for k in SIGNED_FIELDS}, "format": HEAD_FORMAT}).encode("utf-8")


def signed_head_body(key: Ed25519PrivateKey, head: EvidenceHead, signed_at: str, interval_s: float) -> str:
    """The canonical JSON body of a `head` record: the claims about head, and their signature with key."""
    public = key.public_key()
    claims = {"count": head.count, "last_seq": head.last_seq, "last_hash": head.last_hash,
              "signed_at": signed_at, "interval_s": float(interval_s), "key_id": key_id(public),
              "public_key": raw_b64(public)}
    signature = base64.b64encode(key.sign(head_message(claims))).decode("ascii")
    return canonical_json({**claims, "signature": signature})


def _inside(path: Path, folder: Path) -> bool:
    """True when path, symlinks resolved, lies inside folder."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def generate_signing_key(path: Path, public_path: Path | None = None) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key (PKCS8 PEM, mode 0600, never over an existing file) and its public key.

    Returns (key file, public key file, key id). The public key file defaults to `<path>.pub`.
    """
    path = Path(path)
    public_path = Path(public_path) if public_path is not None else path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    written: list[Path] = []
    try:
        for target, data, mode in ((path, pem, 0o600),
                                   (public_path, public_key_pem(key.public_key()).encode("ascii"), 0o644)):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            written.append(target)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        for done in written:
            done.unlink(missing_ok=True)
        why = "exists already (a key is never overwritten)" if isinstance(exc, FileExistsError) else exc.strerror
        raise KeyFileError(f"{exc.filename or path}: {why or exc}") from None
    return path, public_path, key_id(key.public_key())


def load_signing_key(path: Path, *, state_dir: Path | None = None) -> Ed25519PrivateKey:
    """The Ed25519 key in path; KeyFileError when it is unusable or kept where it protects nothing.

    Refused: a key inside state_dir (whoever copies or edits the state would take the key with it), a
    key file that others may read or write, anything but an unencrypted Ed25519 PEM key. (A symlink is
    followed: secret stores mount keys that way; the mode checked is the target's.)
    """
    path = Path(path)
    if state_dir is not None and _inside(path, state_dir):
        raise KeyFileError(f"evidence.signing_key_file {path} is inside the state directory {state_dir}: "
                           "keep the key where a copy or edit of the state does not reach it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"evidence.signing_key_file {path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(f"evidence.signing_key_file {path}: mode {mode:04o} lets others read it "
                               "(chmod 600 it, and make a new key if others may have copied it)")
        data = fh.read(64 * 1024)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"evidence.signing_key_file {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"evidence.signing_key_file {path}: not an Ed25519 key (`monitor evidence keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (what `monitor evidence keygen` writes as `.pub`)."""
    path = Path(path)
    try:
        data = path.read_bytes()[: 64 * 1024]
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key



def head_problem(body: object, public: Ed25519PublicKey, n_before: int, prev_seq: int, prev_hash: str) -> str | None:
    """Why a head record does not prove the chain before it (forged, other key, rewritten records), or None."""
    if not isinstance(body, dict) or any(k not in body for k in (*SIGNED_FIELDS, "signature")):
        return "head record without the signed fields (forged or damaged)"
    if body["key_id"] != key_id(public) or body["public_key"] != raw_b64(public):
        return f"head signed by another key (key id {str(body['key_id'])[:16]!r}, expected {key_id(public)})"
    try:
        public.verify(base64.b64decode(str(body["signature"]), validate=True), head_message(body))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return "head signature invalid (head forged or edited)"
    if (body["count"], body["last_seq"], body["last_hash"]) != (n_before, prev_seq, prev_hash):
        return (f"signed head (seq {body['last_seq']}, {body['count']} records) does not match the chain before it"
                f" (seq {prev_seq}, {n_before} records): records before it were edited, removed or rehashed")
    return None
