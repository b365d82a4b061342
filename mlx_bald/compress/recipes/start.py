"""The start stage of a depth-reduced decoder: which teacher layers the student keeps (or how they
are merged), closed-form least-squares patches, then local distillation, all before any
end-to-end step. Every choice here is measured by ``python -m benchmarks.recovery``; the defaults
(``StartConfig()``) are its best measured variant.

The result is an ordinary merged student (a spec with ``decoder_merge`` groups whose weights pick
or average the layers, patched fc2 weights): the converter and the MLX runtime read it unchanged.
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlx_bald.compress.ops.merge import adjacent_pairs
from mlx_bald.compress.ops.model import apply_spec
from mlx_bald.compress.ops.patch import fit_fc2_patch, fold_into
from mlx_bald.compress.train.decoder_states import layer_rows
from mlx_bald.compress.train.local import LocalConfig, train_local
from mlx_bald.spec import CompressionSpec, MergeGroup, SpecError
from mlx_bald.start_config import LAYER_CHOICES, StartConfig


def spaced_layers(n_layers: int, n_keep: int) -> list[int]:
    """Maximally spaced layers, the first and the last always kept (distil-whisper: 6 -> 3 keeps 0, 2, 5)."""
    if not 1 <= n_keep <= n_layers:
        raise SpecError(f"cannot keep {n_keep} of {n_layers} decoder layers")
    if n_keep == 1:
        return [n_layers - 1]
    return sorted({int(np.floor(x)) for x in np.linspace(0, n_layers - 1, n_keep)})


def kept_groups(kept: Sequence[int], n_layers: int) -> list[MergeGroup]:
    """Kept layer k stands for the block from k up to the next kept layer (the first block starts
    at 0): a group whose weights select k alone."""
    if sorted(kept) != list(kept) or kept[-1] >= n_layers:
        raise SpecError(f"kept layers {list(kept)} must ascend within 0..{n_layers - 1}")
    starts = [0, *kept[1:]]
    ends = [*kept[1:], n_layers]
    return [MergeGroup(list(range(s, e)), [1.0 if i == k else 0.0 for i in range(s, e)])
            for k, s, e in zip(kept, starts, ends)]


def start_groups(cfg: StartConfig, n_layers: int, n_keep: int) -> list[MergeGroup]:
    """The student's blocks: ``spaced`` (distil-whisper's spacing), ``pairs`` (adjacent pairs
    averaged with ``alpha``), ``lower``/``upper`` (one layer of each adjacent pair)."""
    if cfg.layers == "spaced":
        return kept_groups(spaced_layers(n_layers, n_keep), n_layers)
    if n_keep * 2 != n_layers:
        raise SpecError(f"--start-layers {cfg.layers} halves the decoder; use spaced for {n_layers} -> {n_keep}")
    if cfg.layers == "pairs":
        return adjacent_pairs(n_layers, cfg.alpha, 1.0 - cfg.alpha)
    if cfg.layers in ("lower", "upper"):
        pick = 0 if cfg.layers == "lower" else 1
        return [MergeGroup([i, i + 1], [1.0 - pick, float(pick)]) for i in range(0, n_layers, 2)]
    raise SpecError(f"start layers must be one of {LAYER_CHOICES}, not {cfg.layers!r}")


def _log(msg: str) -> None:
    print(f"[start] {msg}", file=sys.stderr, flush=True)


@torch.no_grad()
def fit_patches(student: nn.Module, teacher: nn.Module, groups: Sequence[MergeGroup], batches: Sequence[dict],
                kind: str, ridge: float, relative: bool = True) -> list[dict]:
    """Patch each student layer in turn, bottom up, on the student's own inputs (so a layer's patch
    also absorbs what the patched layers below it still miss). Returns each layer's relative
    squared error against the teacher before and after its patch, on the fit rows."""
    targets = layer_rows(teacher, batches, {g.layers[-1]: ("y",) for g in groups})
    report = []
    for j, g in enumerate(groups):
        t = targets[g.layers[-1]]["y"]
        rows = layer_rows(student, batches, {j: ("a", "f", "y")})[j]
        residual = rows["y"] - rows["f"]
        fc2 = student.model.decoder.layers[j].fc2
        w, b = fit_fc2_patch(fc2, rows["a"], residual, t, kind, ridge, relative)
        err = lambda y: float(((y - t) ** 2).sum() / (t ** 2).sum())  # noqa: E731
        after = residual + rows["a"] @ w.T.float() + b.float()
        fold_into(fc2, w, b)
        report.append({"layer": j, "block": g.layers, "rel_err_before": round(err(rows["y"]), 4),
                       "rel_err_after": round(err(after), 4)})
    return report


def build_start(teacher: nn.Module, n_keep: int, batches: Sequence[dict], cfg: StartConfig = StartConfig(),
                work: Path | None = None, progress: bool = True) -> tuple[nn.Module, CompressionSpec, dict]:
    """A ``n_keep``-layer student of ``teacher`` started by ``cfg`` on ``batches`` (teacher-forced
    real speech; labels are the tokens the states are taken on). Returns (student, spec, report)."""
    n_layers = teacher.config.decoder_layers
    groups = start_groups(cfg, n_layers, n_keep)
    spec = CompressionSpec(decoder_merge=groups, recipe=["bald"])
    student = apply_spec(copy.deepcopy(teacher), spec)
    report: dict = {"groups": [[g.layers, g.weights] for g in groups], "config": vars(cfg).copy()}
    for stage in (("local", "patch") if cfg.order == "local-then-patch" else ("patch", "local")):
        if stage == "patch" and cfg.patch != "none":
            report["patch"] = fit_patches(student, teacher, groups, batches, cfg.patch, cfg.ridge, cfg.relative)
            _log(f"patches ({cfg.patch}): " + ", ".join(
                f"layer {r['layer']} {r['rel_err_before']} -> {r['rel_err_after']}" for r in report["patch"]))
        if stage == "local" and cfg.local_steps > 0:
            lc = LocalConfig(lr=cfg.local_lr, steps=cfg.local_steps, inputs=cfg.local_inputs,
                             checkpoint_every=max(50, cfg.local_steps // 4))
            ckpt = None if work is None else work / "local_checkpoint.pt"
            report["local"] = train_local(student, teacher, groups, batches, lc, ckpt, progress)
    return student.eval(), spec, report
