"""Atomic folder writes: build in a sibling temp folder, rename into place at the end, so
an interrupted download or conversion never leaves a half-written folder behind.

Only folders that mlx-bald wrote are ever replaced: each one gets a marker file, and an
existing folder without it is replaced only when it is empty, lies in mlx-bald's cache, or
holds nothing but a model folder's files (one written before the marker existed)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mlx_bald.errors import MlxBaldError

MARKER = ".mlx-bald"  # in every folder atomic_dir writes
# what a model folder written by mlx-bald (MLX or transformers layout) may hold
MODEL_FILES = frozenset({"config.json", "weights.safetensors", "model.safetensors", "generation_config.json",
                         "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                         "special_tokens_map.json", "vocab.json", "merges.txt", "normalizer.json",
                         "added_tokens.json", MARKER})


def _is_model_folder(folder: Path, names: set[str]) -> bool:
    if "config.json" not in names or not names <= MODEL_FILES:
        return False
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "whisper"
    except (OSError, ValueError, AttributeError):
        return False


def _in_cache(folder: Path) -> bool:
    from mlx_bald.paths import cache_dir

    return cache_dir().resolve() in folder.resolve().parents


def refuse_file(folder: Path, flag: str = "--out") -> None:
    """One clear error where a folder is wanted and a file is in the way (before any work)."""
    if folder.exists() and not folder.is_dir():
        raise MlxBaldError(f"{flag + ' ' if flag else ''}{folder} is a file, not a folder")


def check_replaceable(folder: str | Path, flag: str = "--out") -> Path:
    """``folder`` if writing it may replace what is there: nothing, an empty folder, or a folder
    mlx-bald wrote. Otherwise one clear error, before any work is done."""
    folder = Path(folder)
    refuse_file(folder, flag)
    if not folder.exists():
        return folder
    names = {p.name for p in folder.iterdir()}
    if not names or MARKER in names or _is_model_folder(folder, names) or _in_cache(folder):
        return folder
    raise MlxBaldError(f"{flag + ' ' if flag else ''}{folder} holds files that mlx-bald did not write ({', '.join(sorted(names)[:3])}"
                       f"{', ...' if len(names) > 3 else ''}): name a new or empty folder")


def mark(folder: str | Path) -> None:
    """Stamp ``folder`` as written by mlx-bald (so a later write may replace it)."""
    (Path(folder) / MARKER).write_text("written by mlx-bald; a rerun may replace this folder\n")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to, renamed onto ``path`` when the block ends
    without error: a kill leaves the old file or none, never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists")
    check_replaceable(final, flag="")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the final folder should not be private
    try:
        yield tmp
        mark(tmp)
        if final.exists():
            check_replaceable(final, flag="")  # something may have appeared there meanwhile
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)  # out of the way first: a kill now leaves no half-deleted folder
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
