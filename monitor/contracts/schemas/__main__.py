"""`python -m monitor.contracts.schemas`: write the JSON Schemas generated from the wire models into this folder."""

from __future__ import annotations

from monitor.contracts.schemas import MODELS, SCHEMA_DIR, write


def main() -> int:
    changed = write()
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(MODELS)} schemas in {SCHEMA_DIR}, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
