# Sourced by scripts/demo and scripts/test: makes .venv at the repository root and installs the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PY" -m venv .venv
fi
# Reinstall only when a pyproject.toml changed since the last install. The runtime (.) and the tools (tools/:
# demo, benchmarks, evaluation, test streams) are two distributions; both are installed editable.
STAMP=.venv/.installed-$(cat pyproject.toml tools/pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS:-base}-${TOOL_EXTRAS:-base}
if [ ! -f "$STAMP" ]; then
    echo "==> installing the project and its tools into .venv (log: .venv/install.log)"
    target="."
    if [ -n "${EXTRAS:-}" ]; then target=".[${EXTRAS}]"; fi
    tools="tools"
    if [ -n "${TOOL_EXTRAS:-}" ]; then tools="tools[${TOOL_EXTRAS}]"; fi
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e "$target" -e "$tools"; } \
            > .venv/install.log 2>&1; then
        tail -n 30 .venv/install.log >&2
        echo "installing the project failed; full log in .venv/install.log" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$STAMP"
fi
