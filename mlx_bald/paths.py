"""Where mlx-bald keeps downloaded packages, converted models and data (outside git)."""
from __future__ import annotations

import hashlib
import os
import re
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


def cache_name(spec: str) -> str:
    """A folder name for a set or model spec: a built-in name as it is (fillets-cs:train ->
    fillets-cs-train); a user's path or hub id a readable tail plus a hash of the whole spec, so
    two specs never share a folder and a path never escapes the cache."""
    if re.fullmatch(r"[A-Za-z0-9._-]+(:[a-z]+)?", spec) and not spec.startswith("."):
        return spec.replace(":", "-")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.rstrip("/").split("/")[-1])[-40:].strip("-.")
    return f"{tail or 'set'}-{hashlib.sha1(spec.encode()).hexdigest()[:10]}"
