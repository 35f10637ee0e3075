#!/usr/bin/env bash
# GPU readiness check: prints one JSON line (see scripts/gpu_check.py and docs/performance.md).
#
#   bash scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--budget SECONDS] ...
#
# Python: $PYTHON if set, else the repository's .venv when it has torch, else python3 (on a lent
# GPU machine, the image's python3 that holds CUDA torch). Wheels in .whl/ (packages that machine
# lacks, e.g. pydantic and tomli-w) are installed into a temporary folder first, never into the
# Python itself. The repository root goes on PYTHONPATH, so raflora need not be installed.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
        PYTHON="$ROOT/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi
EXTRA=""
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d -t raflora-gpu-check.XXXXXX)"
    trap 'rm -rf "$SITE"' EXIT
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl >&2; then
        EXTRA="$SITE:"
    else
        echo "gpu_check: installing the wheels in .whl/ failed; going on without them" >&2
    fi
fi
export PYTHONPATH="$ROOT:$EXTRA${PYTHONPATH:-}"
"$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
