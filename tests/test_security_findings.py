"""Issue 19's security findings, one test (or more) per finding, named after it.

Each test here failed before its fix. Findings with larger test files of their own (the evidence
signatures, bans, the state files) have their tests there; SECURITY.md lists where each one is.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# -- finding 7: dependency floors with known CVEs ------------------------------------------------------------


def test_finding7_aiohttp_floor_excludes_releases_with_known_cves() -> None:
    """CVE-2024-52303, CVE-2024-52304 (fixed in 3.10.11) and CVE-2025-53643 (fixed in 3.12.14)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"aiohttp\b", d))
    floor = re.search(r">=\s*([\d.]+)", spec)
    assert floor is not None, spec
    assert _version(floor.group(1)) >= (3, 12, 14), spec
    assert _version(metadata.version("aiohttp")) >= (3, 12, 14)
