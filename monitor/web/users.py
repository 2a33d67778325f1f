"""The web console's accounts: one JSON file in the state directory (mode 0600), argon2id password hashes.

Roles, each allowed what the one before is:
  viewer     sees the queue and incidents (hashes and metadata; images only blurred and audited)
  moderator  claims incidents and acts on them; a permanent-ban terminate needs a second person's approval
  lead       also terminates with a permanent ban alone, approves others' and reads the audit page
  admin      everything a lead may
`monitor users add|passwd|disable|list` (monitor/cli/users.py) edits the file; the console reads it at each login,
so a disabled account cannot log in again and its sessions end at their next request.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from monitor.common.errors import UserError
from monitor.common.safetext import describe_char, forbidden_char
from monitor.common.statefiles import PRIVATE_FILE_MODE, private_dir
from monitor.contracts.messages import ROLE_NAMES, RoleName

__all__ = ["ROLES", "Role", "User", "UserStore", "at_least", "users_path"]

Role = RoleName
ROLES: Final[tuple[Role, ...]] = ROLE_NAMES
USERS_FILE = "web-users.json"
MIN_PASSWORD = 10
DEFAULT_BLUR = 24  # px of CSS blur on a matched sample until revealed
_HASHER = PasswordHasher()  # argon2id, the library's defaults (RFC 9106 low-memory profile)


@functools.cache
def _dummy_hash() -> str:
    """A hash verified when the user name is unknown, so a wrong name takes as long as a wrong password."""
    return _HASHER.hash("not a password of anyone")


def at_least(role: str, wanted: Role) -> bool:
    """True when role is wanted or above it."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(wanted)


def users_path(state_dir: Path, users_file: Path | None = None) -> Path:
    return Path(users_file) if users_file is not None else Path(state_dir) / USERS_FILE


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    password_hash: str
    disabled: bool = False
    blur_px: int = DEFAULT_BLUR


def check_name(name: str) -> str:
    if not name or len(name) > 64 or name != name.strip():
        raise UserError(f"user name {name!r}: 1 to 64 characters, no spaces at either end")
    bad = forbidden_char(name)
    if bad is not None:
        raise UserError(f"user name holds {describe_char(bad[1])} at position {bad[0]}")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    return password


class UserStore:
    """The users file: read on every call (it is small), written whole through a 0600 temporary file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, User]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read the users file: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            return {name: User(name=name, role=u["role"], password_hash=u["password_hash"],
                               disabled=bool(u.get("disabled", False)), blur_px=int(u.get("blur_px", DEFAULT_BLUR)))
                    for name, u in data["users"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{self.path}: not a users file of the web console") from None

    def _save(self, users: dict[str, User]) -> None:
        private_dir(self.path.parent)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump({"users": {n: {k: v for k, v in asdict(u).items() if k != "name"}
                                 for n, u in sorted(users.items())}}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def get(self, name: str) -> User | None:
        return self.load().get(name)

    def add(self, name: str, password: str, role: Role) -> User:
        users = self.load()
        if check_name(name) in users:
            raise UserError(f"user {name!r} exists (use `monitor users passwd`)")
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        users[name] = User(name, role, _HASHER.hash(check_password(password)))
        self._save(users)
        return users[name]

    def update(self, name: str, *, password: str | None = None, role: Role | None = None,
               disabled: bool | None = None, blur_px: int | None = None) -> User:
        users = self.load()
        user = users.get(name)
        if user is None:
            raise UserError(f"no user {name!r} in {self.path}")
        if password is not None:
            user = replace(user, password_hash=_HASHER.hash(check_password(password)))
        if role is not None:
            user = replace(user, role=role)
        if disabled is not None:
            user = replace(user, disabled=disabled)
        if blur_px is not None:
            user = replace(user, blur_px=max(0, min(64, blur_px)))
        users[name] = user
        self._save(users)
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when name and password match an enabled account, else None (in about the same time)."""
        user = self.load().get(name)
        try:
            _HASHER.verify(user.password_hash if user is not None else _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        return user
