"""Where mlx-bald keeps downloaded packages, converted models and data (outside git)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MLX_BALD_CACHE``, else ``$XDG_CACHE_HOME/mlx-bald``, else ``~/.cache/mlx-bald``."""
    env = os.environ.get("MLX_BALD_CACHE")
    if env:
        root = Path(env)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-bald"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    p = cache_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_dir() -> Path:
    p = cache_dir() / "data"
    p.mkdir(parents=True, exist_ok=True)
    return p


def downloads_dir() -> Path:
    p = cache_dir() / "downloads"
    p.mkdir(parents=True, exist_ok=True)
    return p
