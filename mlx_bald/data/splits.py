"""The fixed train/dev/test rule of the built-in sets: a hash of the split unit's name (a level,
a prompt), so a split never changes between runs or machines."""
from __future__ import annotations

import hashlib

from mlx_bald.errors import MlxBaldError

SPLITS = ("train", "dev", "test")


def split_of(key: str) -> str:
    """sha1(key) % 10 == 0 -> test, == 1 -> dev, else train."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise MlxBaldError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
