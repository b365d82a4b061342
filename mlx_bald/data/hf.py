"""Hugging Face ``datasets`` as clip sources: a ``save_to_disk`` folder, or a hub dataset
(``hf:NAME[:CONFIG]:SPLIT``, needs internet).

The audio column is read undecoded (``Audio(decode=False)``: the file's bytes and/or path) and
decoded by ``mlx_bald.audio.load_audio``; ``datasets``' own decoding needs torchcodec and FFmpeg.
Rows are numbered from 1 in the dataset's order.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_bald.data.clips import Clip
from mlx_bald.data.rows import Columns, check_audio, layout_of, row_group, row_language, row_text
from mlx_bald.errors import MlxBaldError

if TYPE_CHECKING:
    from datasets import Dataset


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise MlxBaldError("Hugging Face datasets need the datasets package: pip install datasets "
                           "(part of mlx-bald[compress])") from e
    return datasets


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_saved(folder: Path, split: str | None, columns: Columns) -> list[Clip]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (then name a split)."""
    try:
        ds = _datasets().load_from_disk(str(folder))
    except Exception as e:  # a damaged folder, or one datasets cannot read back (some versions: 0 rows)
        raise MlxBaldError(f"{folder}: datasets could not read this save_to_disk folder ({type(e).__name__}: "
                           f"{_first_line(e)})") from e
    label = str(folder)
    if hasattr(ds, "keys"):  # a DatasetDict
        names = sorted(ds.keys())
        if split is None and len(names) == 1:
            split = names[0]
        if split not in names:
            raise MlxBaldError(f"{folder}: {'no split ' + repr(split) if split else 'several splits'} "
                               f"(splits: {', '.join(names)}): use '{folder}:{names[0]}'")
        ds, label = ds[split], f"{folder}:{split}"
    elif split is not None:
        raise MlxBaldError(f"{folder} holds one dataset, not splits: drop ':{split}'")
    return clips_from_dataset(ds, label, columns, folder)


_FIELDS = re.compile(r":(?![^\[]*\])")  # colons outside a split slice such as test[:100]


def load_hub(spec: str, columns: Columns) -> list[Clip]:
    """``NAME[:CONFIG]:SPLIT``, e.g. ``mozilla-foundation/common_voice_17_0:cs:test``; the split may be
    sliced as datasets allows (``test[:200]``)."""
    parts = _FIELDS.split(spec)
    if len(parts) not in (2, 3) or not all(parts):
        raise MlxBaldError(f"hf:{spec}: write hf:NAME[:CONFIG]:SPLIT, "
                           "e.g. hf:mozilla-foundation/common_voice_17_0:cs:test")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1]
    datasets = _datasets()
    unreachable = hub_unreachable()
    try:
        with _offline(bool(unreachable)):  # else datasets retries for ~25 s, printing each try
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, gated, no such dataset/config/split: all the user's to fix
        if unreachable:
            raise MlxBaldError(f"hf:{spec}: cannot reach the Hugging Face hub ({unreachable}) and it is not in "
                               "the datasets cache. Save it once with save_to_disk where there is internet "
                               "and pass that folder") from e
        raise MlxBaldError(f"hf:{spec}: could not load it from the Hugging Face hub ({type(e).__name__}: "
                           f"{_first_line(e)}). Offline? Save it once with "
                           "save_to_disk where there is internet and pass that folder") from e
    return clips_from_dataset(ds, f"hf:{spec}", columns, None)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (a TCP connection to its endpoint fails within ``timeout``
    seconds), or None: reachable, or not for us to probe (offline mode set: datasets then reads
    its cache at once; a proxy: only the proxy knows)."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """datasets and huggingface_hub in offline mode (cache only) for a while, as HF_HUB_OFFLINE=1 would."""
    if not on:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def clips_from_dataset(ds: Dataset, label: str, columns: Columns, folder: Path | None) -> list[Clip]:
    """Checked clips of every row of a ``datasets.Dataset``; relative audio paths are taken from ``folder``."""
    datasets = _datasets()
    layout = layout_of(ds.column_names, columns, label)
    if isinstance(ds.features[layout.audio], datasets.Audio):
        ds = ds.cast_column(layout.audio, datasets.Audio(decode=False))
    ds = ds.select_columns([c for c in dict.fromkeys((layout.audio, layout.text, layout.language, layout.group)) if c])
    if len(ds) == 0:
        raise MlxBaldError(f"{label}: no rows, so no data")
    clips, paths = [], []
    for i, row in enumerate(ds):
        where = f"{label}, row {i + 1}"
        text, language = row_text(row, layout, where), row_language(row, layout, where)
        data, path = _audio_of(row.get(layout.audio), folder, where)
        check_audio(data if data is not None else path, where)
        clips.append(Clip(id=f"row-{i + 1:06d}", path=path or Path(f"row-{i + 1:06d}"), text=text, language=language,
                          group=row_group(row, layout, ""), data=data))
        paths.append(path.as_posix() if path else None)
    if all(paths) and len(set(paths)) == len(paths):  # ids: the audio's own names when they tell rows apart
        for clip, p in zip(clips, paths):
            clip.id = p
    return clips


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""


def _audio_of(value, folder: Path | None, where: str) -> tuple[bytes | None, Path | None]:
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
        raise MlxBaldError(f"{where}: no audio (neither a file path nor the file's bytes)")
    path = Path(value["path"]) if value.get("path") else None
    if value.get("bytes"):
        return bytes(value["bytes"]), path
    if not path.is_absolute() and folder is not None:
        path = folder / path
    return None, path
