import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_bald  # noqa: E402,F401  (OpenBLAS before mlx.core)

# Tests that name no model get stock base whatever students this machine has built
# (subprocesses inherit it); test_hub checks the default rule itself.
os.environ.setdefault("MLX_BALD_MODEL", "whisper-base")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty mlx-bald cache for tests that exercise downloading/conversion paths."""
    monkeypatch.setenv("MLX_BALD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(*args: str, env: dict | None = None):
    """Run the mlx-bald CLI in a subprocess (as a user would); returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "mlx_bald.cli.main", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=900)
