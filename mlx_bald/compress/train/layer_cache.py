"""Encoder hidden states cached on disk, and a layer trainer that reads them.

AdaPTwin's layer-wise objective is ||T'(X_in) - X_out||^2 with (X_in, X_out) taken from the
ORIGINAL encoder. The original runs once per clip and every layer boundary is kept
(fp16, one safetensors file per clip), so each training step costs only the layer itself, and
the same states also serve the pruning recovery, whose "bridge" layers learn X_a -> X_b
across removed layers. Short clips can be packed back to back into windows first, so that
the MSE is not mostly Whisper's 30 s padding. Training streams a batch at a time from disk (never all states in
memory), with a progress bar and a resumable checkpoint.

Boundary k (key ``h{k}``) is the input of encoder layer k; ``h{n}`` is the last layer's
output, before the encoder's final LayerNorm.
"""
from __future__ import annotations

import math
import os
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F

from mlx_bald.compress.train.clip_store import clip_file, write_missing
from mlx_bald.compress.train.hardware import Shard, rank, world_size
from mlx_bald.compress.train.trainer import TrainConfig, shares, train


class _StopForward(Exception):
    """Raised by a hook once the last needed activation is captured (saves the rest)."""


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


@torch.no_grad()
def capture_layer_io(original: nn.Module, layers: dict[str, nn.Module], batch: dict[str, torch.Tensor],
                     stop_early: bool = True) -> dict[str, tuple[tuple, dict, torch.Tensor]]:
    """Run ``original``'s encoder on ``batch["input_features"]`` and return {key: (args,
    kwargs, output)} of each of ``layers`` (forward hooks; stops after the last one)."""
    seen: dict[str, tuple[tuple, dict, torch.Tensor]] = {}
    handles = []

    def hook(key: str):
        def fn(_m, args, kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            seen[key] = (_detach(args), _detach(kwargs), y.detach())
            if stop_early and len(seen) == len(layers):
                raise _StopForward
        return fn

    for key, layer in layers.items():
        handles.append(layer.register_forward_hook(hook(key), with_kwargs=True))
    weight = next(original.parameters())
    try:
        original.model.encoder(batch["input_features"].to(device=weight.device, dtype=weight.dtype))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


class HiddenStates:
    """Per-clip encoder boundaries ``h0..hN`` in ``folder`` (on disk in fp16; ``load`` returns
    float32 on ``device``)."""

    def __init__(self, folder: str | os.PathLike, device: torch.device | str | None = None):
        self.folder, self.device = Path(folder), device

    def path(self, clip_id: str) -> Path:
        return clip_file(self.folder, clip_id)

    def has(self, clip_id: str) -> bool:
        return self.path(clip_id).is_file()

    @torch.no_grad()
    def build(self, model: nn.Module, clips: Iterable[tuple[str, torch.Tensor]], batch_size: int = 4,
              progress: bool = True) -> int:
        """Run ``model``'s encoder on ``clips`` ((id, input_features [n_mels, T]) pairs) and
        store every layer boundary. Clips already stored are skipped; returns how many ran."""
        layers = {f"{i}": l for i, l in enumerate(model.model.encoder.layers)}
        n = len(layers)

        def compute(ids: list[str], feats: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            io = capture_layer_io(model, layers, {"input_features": feats}, stop_early=False)
            bounds = [io[f"{i}"][0][0] for i in range(n)] + [io[f"{n - 1}"][2]]
            rows = []
            for row, cid in enumerate(ids):
                tensors = {f"h{k}": b[row].to(torch.float16).cpu() for k, b in enumerate(bounds)}
                if not all(torch.isfinite(t).all() for t in tensors.values()):
                    raise ValueError(f"{cid}: hidden states overflow fp16")
                rows.append(tensors)
            return rows

        model.eval()
        cfg = model.config  # fp16 [frames, d] at every layer boundary
        return write_missing(self.folder, clips, compute, batch_size, "hidden states", progress,
                             bytes_per_clip=(n + 1) * cfg.max_source_positions * cfg.d_model * 2)

    def load(self, clip_ids: Sequence[str], *keys: int) -> list[torch.Tensor]:
        """For each boundary index in ``keys``: a float32 [B, T, d] stack over ``clip_ids``."""
        out: list[list[torch.Tensor]] = [[] for _ in keys]
        for cid in clip_ids:
            with safe_open(str(self.path(cid)), framework="pt") as f:
                for slot, k in enumerate(keys):
                    out[slot].append(f.get_tensor(f"h{k}"))
        return [torch.stack(t).to(self.device or "cpu", torch.float32) for t in out]


@dataclass
class Window:
    """Train clips back to back: one encoder window of unlabelled speech."""

    id: str
    clips: list

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate([c.audio for c in self.clips])


def pack_windows(clips: Sequence, seed: int, seconds: tuple[float, float] = (5.0, 28.0)) -> list[Window]:
    """Shuffle ``clips`` (each needs .id and .audio at 16 kHz) and pack them in order into
    windows whose length is drawn uniformly from ``seconds`` (a clip longer than the draw
    gets a window of its own). Deterministic in (clip ids, seed, seconds)."""
    rng = random.Random(seed)
    order = list(clips)
    rng.shuffle(order)
    windows: list[Window] = []
    current: list = []
    length, budget = 0.0, rng.uniform(*seconds)

    def close() -> None:
        ids = "|".join(c.id for c in current)
        windows.append(Window(f"win-{seconds[0]:g}-{seconds[1]:g}-s{seed}/{len(windows):04d}-{zlib.crc32(ids.encode()):08x}",
                              list(current)))

    for c in order:
        n = len(c.audio) / 16_000
        if current and length + n > budget:
            close()
            current, length, budget = [], 0.0, rng.uniform(*seconds)
        current.append(c)
        length += n
    if current:
        close()
    return windows


@dataclass
class LayerTrainConfig(TrainConfig):
    lr: float = 3e-4  # peak; decays linearly to 0 over the run
    epochs: int = 2
    batch_size: int = 4
    weight_decay: float = 0.0
    checkpoint_every: int = 20
    schedule: str = "linear"


def _epoch_batches(ids: Sequence[str], cfg: LayerTrainConfig, epoch: int) -> list[list[str]]:
    order = list(ids)
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    return [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]


def _steps(ids: Sequence[str], cfg: LayerTrainConfig) -> Iterator[tuple[int, list[str]]]:
    for epoch in range(cfg.epochs):
        for batch in _epoch_batches(ids, cfg, epoch):
            yield epoch, batch


class LayerStack(nn.Module):
    """Encoder layers run in order, then an optional FROZEN final norm: the unit that
    end-to-end recovery trains from the cached input of the first layer (``h0``) to the
    encoder output. With the norm, the loss is taken where the decoder reads the states."""

    def __init__(self, layers: Sequence[nn.Module], final: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final = final
        if final is not None:
            for p in final.parameters():
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.layers.parameters())

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """The cached boundary ``y`` mapped to where this stack's output lives."""
        if self.final is None:
            return y
        with torch.no_grad():
            return self.final(y)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            y = layer(h, mask)
            h = y[0] if isinstance(y, tuple) else y
        return self.final(h) if self.final is not None else h


def train_layer(layer: nn.Module, states: HiddenStates, ids: Sequence[str], src: int, dst: int,
                cfg: LayerTrainConfig, ckpt: str | os.PathLike | None = None, desc: str = "layer",
                progress: bool = True, params: Sequence[nn.Parameter] | None = None,
                target: Callable[[torch.Tensor], torch.Tensor] | None = None,
                extra_loss: Callable[[list[str], torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                meta: Mapping[str, object] | None = None) -> dict[str, float]:
    """Train ``layer`` (all its parameters, spectral and LoRA alike) so that
    layer(h_src) ~ h_dst in MSE over clips ``ids``. ``dst = src + 1`` is AdaPTwin's layer-wise
    fine-tuning; ``dst > src + 1`` trains a bridge across removed layers. ``params`` (default
    all) are the ones trained; ``target`` maps the cached h_dst to the layer's output space
    (recovery: a whole ``LayerStack`` ending in its frozen final norm); ``extra_loss(batch ids,
    output, target)`` is added to the MSE (e.g. ``recovery.DecoderKL``). With ``ckpt`` the
    state is saved every ``cfg.checkpoint_every`` steps and a rerun resumes from it; ``meta``
    (what else defines the loss, e.g. the KL weight) is saved with it, and resuming a checkpoint
    saved with other ``meta`` is refused rather than silently mixing two runs. Returns
    {"loss_first_epoch", "loss_last_epoch", "steps"} (mean loss per epoch: the MSE, plus
    ``extra_loss`` when given)."""
    if not ids:
        raise ValueError("no clips to train on")
    # optimiser steps: each takes cfg.accumulate micro-batches (an epoch's remainder joins the next)
    total = cfg.epochs * math.ceil(len(ids) / cfg.batch_size) // max(cfg.accumulate, 1)
    if total < 1:
        raise ValueError(f"{len(ids)} clips x {cfg.epochs} epochs make fewer batches than --grad-accum {cfg.accumulate}")
    params = list(layer.parameters()) if params is None else list(params)
    target = target or (lambda y: y)
    for p in params:
        p.requires_grad_(True)
    shard = Shard(rank(), world_size())
    state: dict = {"sums": {}}  # epoch -> [loss sum, batches]

    def stream(skip: int) -> Iterator[tuple[int, list[str], int]]:
        for i, (epoch, batch) in enumerate(_steps(ids, cfg)):
            if i >= skip:  # the order is a function of seed and epoch: a resumed run sees the same
                yield epoch, batch[shard.rows(len(batch))], len(batch)

    def loss_fn(item: tuple[int, list[str], int]) -> dict[str, torch.Tensor]:
        epoch, batch, _ = item
        x, y = states.load(batch, src, dst)
        out, t = layer(x, None), target(y)
        out = out[0] if isinstance(out, tuple) else out
        loss = F.mse_loss(out.float(), t.float())
        if extra_loss is not None:
            loss = loss + extra_loss(batch, out, t)
        acc = state["sums"].setdefault(epoch, [0.0, 0])
        acc[0] += loss.item() / cfg.accumulate
        acc[1] += 1 / cfg.accumulate
        return {"loss": loss}

    stats = train({"layer": layer}, [{"params": params}], loss_fn, stream, total, cfg, ckpt, desc=desc,
                  progress=progress, weight=lambda item: shares(len(item[1]), item[2], shard.world),
                  meta=meta, state=state)
    for p in params:
        p.requires_grad_(False)
    sums = {int(k): v for k, v in state["sums"].items()}
    first, last = sums[min(sums)], sums[max(sums)]
    return {"loss_first_epoch": first[0] / first[1], "loss_last_epoch": last[0] / last[1], "steps": total,
            "loss_last_steps": stats.get("loss", float("nan"))}


def speech_mask(ids: Sequence[str], frames: Mapping[str, int] | None, length: int) -> torch.Tensor:
    """[B, T] True on each clip's speech frames (its first ``frames[id]``); all True without ``frames``."""
    mask = torch.ones(len(ids), length, dtype=torch.bool)
    if frames is not None:
        for row, cid in enumerate(ids):
            mask[row, frames[cid]:] = False
    return mask


@torch.no_grad()
def relative_layer_error(layer: nn.Module, states: HiddenStates, ids: Sequence[str], src: int, dst: int,
                         batch_size: int = 4, frames: Mapping[str, int] | None = None) -> float:
    """sum ||layer(h_src) - h_dst||^2 / sum ||h_dst - h_src||^2: the part of the original
    layer's (or layers') update that ``layer`` gets wrong, on clips ``ids``; with ``frames``
    only over each clip's speech frames (Whisper pads every input to 30 s)."""
    layer.eval()
    err = ref = 0.0
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        x, y = states.load(chunk, src, dst)
        out = layer(x, None)
        out = out[0] if isinstance(out, tuple) else out
        keep = speech_mask(chunk, frames, x.shape[1]).to(x.device)
        err += float(((out - y) ** 2).sum(-1)[keep].sum())
        ref += float(((y - x) ** 2).sum(-1)[keep].sum())
    return err / max(ref, 1e-30)


@torch.no_grad()
def relative_output_error(stack: LayerStack, states: HiddenStates, ids: Sequence[str], src: int, dst: int,
                          batch_size: int = 4, frames: Mapping[str, int] | None = None) -> float:
    """sum ||stack(h_src) - target(h_dst)||^2 / sum ||target(h_dst)||^2 on clips ``ids`` (with
    ``frames``: their speech frames only): how far a whole (compressed) encoder's output is
    from the original's."""
    stack.eval()
    err = ref = 0.0
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        x, y = states.load(chunk, src, dst)
        y = stack.target(y)
        keep = speech_mask(chunk, frames, x.shape[1]).to(x.device)
        err += float(((stack(x, None) - y) ** 2).sum(-1)[keep].sum())
        ref += float((y ** 2).sum(-1)[keep].sum())
    return err / max(ref, 1e-30)
