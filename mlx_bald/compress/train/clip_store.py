"""Per-clip tensors on disk, one safetensors file per clip id (a cache is sharded by clip, and
a file is memory-mapped when read), computed in batches and written atomically: the one
writer behind every cache (encoder outputs, layer hidden states, cross-attention K/V, teacher
targets). Each announces its size before it is built and is refused when the disk lacks the
room."""
from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")

Inputs = torch.Tensor | Callable[[], torch.Tensor]


def clip_file(folder: str | os.PathLike, clip_id: str) -> Path:
    return Path(folder) / f"{_SAFE_ID.sub('_', clip_id)}.safetensors"


def check_room(folder: str | os.PathLike, n_clips: int, bytes_per_clip: int, what: str) -> None:
    """Announce a cache's size before building it ("1,240 clips -> 1.9 GB"); refuse, naming
    what is needed, when the disk lacks the room."""
    from mlx_bald.errors import MlxBaldError

    need = n_clips * bytes_per_clip
    Path(folder).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    print(f"[cache] {what}: {n_clips:,} clips -> {need / 1e9:.2f} GB in {folder}", file=sys.stderr, flush=True)
    if need > free * 0.95:
        raise MlxBaldError(f"{what} needs {need / 1e9:.1f} GB and {folder} has {free / 1e9:.1f} GB free: "
                           f"free some room, or move the cache with $MLX_BALD_CACHE")


def write_missing(folder: str | os.PathLike, clips: Iterable[tuple[str, Inputs]],
                  compute: Callable[[list[str], torch.Tensor], list[dict[str, torch.Tensor]]],
                  batch_size: int, desc: str, progress: bool = True, bytes_per_clip: int | None = None) -> int:
    """Store ``compute(ids, stacked inputs)`` (one {name: tensor} per clip) for every clip of
    ``clips`` ((id, inputs) pairs) not on disk yet. ``inputs`` may be a zero-argument callable,
    then called only for those clips (e.g. a mel that need not be computed for cached clips).
    With ``bytes_per_clip``, the size of what is missing is announced (and checked against the
    free space) first. Returns how many clips were computed."""
    from tqdm.auto import tqdm

    Path(folder).mkdir(parents=True, exist_ok=True)
    if bytes_per_clip is not None:
        clips = list(clips)
        missing = sum(not clip_file(folder, cid).is_file() for cid, _ in clips)
        if missing:
            check_room(folder, missing, bytes_per_clip, desc)
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


# ---- encoder-output cache ----------------------------------------------------------------
@torch.no_grad()
def cache_encoder_outputs(model: nn.Module, clips: Iterable[tuple[str, Inputs]], cache_dir: str | os.PathLike,
                          batch_size: int = 8, progress: bool = True) -> int:
    """Run ``model``'s encoder once per clip (``clips`` yields (clip_id, input_features
    [n_mels, T] or a callable returning them)) and store last_hidden_state [S, d] as fp16, one
    safetensors file per clip. Clips already cached are skipped. Returns how many were computed."""
    encoder = model.model.encoder
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype

    def compute(ids: list[str], feats: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        states = encoder(feats.to(device=device, dtype=dtype)).last_hidden_state.to(torch.float16).cpu()
        return [{"encoder_hidden_states": s} for s in states]

    cfg = model.config
    try:  # fp16 [frames, d] per clip
        return write_missing(cache_dir, clips, compute, batch_size, "encoder cache", progress,
                             bytes_per_clip=cfg.max_source_positions * cfg.d_model * 2)
    finally:
        encoder.train(was_training)


def load_cached_encoder_output(cache_dir: str | os.PathLike, clip_id: str) -> torch.Tensor:
    path = clip_file(cache_dir, clip_id)
    if not path.is_file():
        raise FileNotFoundError(f"no cached encoder output for {clip_id!r} in {cache_dir}")
    return load_file(str(path))["encoder_hidden_states"]

