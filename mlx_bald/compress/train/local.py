"""Local (layer-wise) distillation of a depth-reduced decoder: each student layer learns to write
what the teacher's block of layers it replaces writes, from the same input, with a relative MSE
on the residual stream. No logits, no end-to-end gradient: every layer's loss stops at its input.

``inputs="teacher"``: each layer reads the teacher's state before its block (layers independent);
``inputs="student"``: each layer reads the student's own state (detached), so a layer learns to
repair what the layers below it still get wrong.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from mlx_bald.compress.train.decoder_states import captured, real_positions
from mlx_bald.compress.train.distill import decoder_forward
from mlx_bald.compress.train.trainer import TrainConfig, train
from mlx_bald.spec import MergeGroup

LOCAL_INPUTS = ("student", "teacher")


@dataclass
class LocalConfig(TrainConfig):
    steps: int = 300
    inputs: str = "student"  # one of LOCAL_INPUTS


def relative_mse(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ((y - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-12)


class _TeacherStates:
    """The teacher's state before and after each group's block, per batch (computed once)."""

    def __init__(self, teacher: nn.Module, groups: Sequence[MergeGroup]):
        self.teacher, self.groups, self.memo = teacher, groups, {}
        firsts = {g.layers[0] for g in groups}
        lasts = {g.layers[-1] for g in groups}
        self.want = {i: (("x",) if i in firsts else ()) + (("y",) if i in lasts else ()) for i in firsts | lasts}

    @torch.no_grad()
    def __call__(self, key: int, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if key not in self.memo:
            with captured(self.teacher, self.want) as seen:
                decoder_forward(self.teacher, batch)
            self.memo[key] = ([seen[g.layers[0]]["x"] for g in self.groups],
                              [seen[g.layers[-1]]["y"] for g in self.groups])
        return self.memo[key]


def local_losses(student: nn.Module, batch: dict, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                 mode: str) -> list[torch.Tensor]:
    """One relative MSE per student layer, at the batch's real positions."""
    keep = real_positions(batch["labels"])
    swap = (lambda i, x: inputs[i]) if mode == "teacher" else (lambda i, x: x.detach())
    with captured(student, {i: ("y",) for i in range(len(targets))}, swap) as seen:
        decoder_forward(student, batch)
    return [relative_mse(seen[i]["y"][keep], targets[i][keep]) for i in range(len(targets))]


def train_local(student: nn.Module, teacher: nn.Module, groups: Sequence[MergeGroup], batches: Sequence[dict],
                cfg: LocalConfig, ckpt: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """``cfg.steps`` AdamW steps on the student's decoder layers (embedding and final norm
    frozen), cycling over ``batches``; returns the mean per-layer losses of the last steps."""
    if cfg.inputs not in LOCAL_INPUTS:
        raise ValueError(f"local inputs must be one of {LOCAL_INPUTS}, not {cfg.inputs!r}")
    teacher_states = _TeacherStates(teacher, groups)
    layers = student.model.decoder.layers
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for layer in layers for p in layer.parameters()]
    for p in params:
        p.requires_grad_(True)

    def stream(skip: int) -> Iterator[tuple[int, dict]]:
        k = skip
        while True:
            yield k % len(batches), batches[k % len(batches)]
            k += 1

    def loss_fn(item: tuple[int, dict]) -> dict[str, torch.Tensor]:
        key, batch = item
        inputs, targets = teacher_states(key, batch)
        losses = local_losses(student, batch, inputs, targets, cfg.inputs)
        return {"loss": sum(losses), **{f"layer{i}": l.detach() for i, l in enumerate(losses)}}

    try:
        return train({"student": student}, [{"params": params}], loss_fn, stream, cfg.steps, cfg, ckpt,
                     desc="local distillation", progress=progress, meta={"inputs": cfg.inputs})
    finally:
        for p in student.parameters():
            p.requires_grad_(True)
