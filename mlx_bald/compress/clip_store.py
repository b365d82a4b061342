"""Per-clip tensors on disk, one safetensors file per clip id, computed in batches and written
atomically: the one writer behind the encoder-output cache (BaldWhisper) and the layer
hidden-state cache (AdaPTwin)."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")

Inputs = torch.Tensor | Callable[[], torch.Tensor]


def clip_file(folder: str | os.PathLike, clip_id: str) -> Path:
    return Path(folder) / f"{_SAFE_ID.sub('_', clip_id)}.safetensors"


def write_missing(folder: str | os.PathLike, clips: Iterable[tuple[str, Inputs]],
                  compute: Callable[[list[str], torch.Tensor], list[dict[str, torch.Tensor]]],
                  batch_size: int, desc: str, progress: bool = True) -> int:
    """Store ``compute(ids, stacked inputs)`` (one {name: tensor} per clip) for every clip of
    ``clips`` ((id, inputs) pairs) not on disk yet. ``inputs`` may be a zero-argument callable,
    then called only for those clips (e.g. a mel that need not be computed for cached clips).
    Returns how many clips were computed."""
    from tqdm.auto import tqdm

    Path(folder).mkdir(parents=True, exist_ok=True)
    pending: list[tuple[str, torch.Tensor]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        ids = [cid for cid, _ in pending]
        for cid, tensors in zip(ids, compute(ids, torch.stack([x for _, x in pending]))):
            tmp = clip_file(folder, cid).with_suffix(".tmp")
            save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp))
            tmp.replace(clip_file(folder, cid))
        done += len(pending)
        pending.clear()

    for cid, inputs in tqdm(clips, desc=desc, disable=not progress, unit="clip"):
        if clip_file(folder, cid).is_file():
            continue
        pending.append((cid, inputs() if callable(inputs) else inputs))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return done
