"""A Hugging Face ``audiofolder``: audio files plus a ``metadata.csv`` or ``metadata.jsonl`` whose
``file_name`` column names each file relative to the folder (what
``datasets.load_dataset("audiofolder", data_dir=...)`` reads).

The metadata is read here as a manifest, without ``datasets``: recent ``datasets`` releases need
torchcodec (and FFmpeg) to build even an undecoded audio column. Splits are subfolders, each
with its own metadata (``PATH:test`` reads ``PATH/test/metadata.*``).
"""
from __future__ import annotations

from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.data.manifest import clips_from_table
from mlx_bald.data.rows import Columns
from mlx_bald.errors import MlxBaldError

METADATA = ("metadata.csv", "metadata.jsonl")


def metadata_file(folder: Path) -> Path | None:
    found = [folder / m for m in METADATA if (folder / m).is_file()]
    if len(found) > 1:
        raise MlxBaldError(f"{folder}: both metadata.csv and metadata.jsonl; keep one")
    return found[0] if found else None


def split_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and metadata_file(p))


def is_audiofolder(folder: Path) -> bool:
    return metadata_file(folder) is not None or bool(split_folders(folder))


def load_audiofolder(folder: Path, split: str | None, columns: Columns) -> list[Clip]:
    splits = split_folders(folder)
    if split is not None:
        if split not in splits:
            raise MlxBaldError(f"{folder}: no split {split!r} (a subfolder with metadata.csv or metadata.jsonl; "
                               f"found: {', '.join(splits) or 'none'})")
        folder = folder / split
    meta = metadata_file(folder)
    if meta is None:
        raise MlxBaldError(f"{folder} has splits {', '.join(splits)}: name one, e.g. '{folder}:{splits[0]}'")
    return clips_from_table(meta, folder, columns, audio_defaults=("file_name", "audio"))
