#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment at .venv with mlx-bald and everything
# it needs. On Linux: CPU torch first (never a multi-GB CUDA build) and OpenBLAS for MLX.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.mlx-bald-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

echo "mlx-bald set-up: creating .venv ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "$(uname -s)" = "Linux" ]; then
    # A plain torch requirement on Linux can resolve to a CUDA build of several GB.
    "${PIP[@]}" "torch==2.13.0" || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
    # MLX's CPU wheel bundles a slow reference BLAS; mlx_bald preloads OpenBLAS when found.
    if ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
            echo "mlx-bald set-up: installing OpenBLAS (libopenblas0-pthread) ..." >&2
            apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
              || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; } \
              || echo "mlx-bald set-up: OpenBLAS not installed; MLX will use its slow reference BLAS" >&2
        else
            echo "mlx-bald set-up: no OpenBLAS found and not root; install libopenblas0-pthread for ~10x faster MLX on CPU" >&2
        fi
    fi
    # The demo page's browser test drives Debian's headless Chromium (optional: it skips without).
    if [ "${MLX_BALD_SKIP_CHROMIUM:-0}" != 1 ] && ! command -v chromium >/dev/null \
       && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "mlx-bald set-up: installing chromium for the demo-page test ..." >&2
        apt-get install -y -q chromium >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
          || echo "mlx-bald set-up: chromium not installed; the browser test will be skipped" >&2
    fi
fi
"${PIP[@]}" -e ".[compress,serve,vad,dev]"
echo "$want" > "$stamp"
echo "mlx-bald set-up: done (.venv/bin/mlx-bald)" >&2
