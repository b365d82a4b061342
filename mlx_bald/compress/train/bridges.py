"""Encoder layer pruning with layer-wise recovery ("bridges").

Which layers: ``prune.score_encoder_layers`` (1 - cos(layer input, layer output) on held-out
audio) and ``prune.choose_layers_to_prune`` (the lowest scores).

Recovery: after removing the run of layers a..b, the kept layer right after it (b+1) no
longer sees h_{b+1} but h_a. It is retrained as a *bridge*: layer(h_a) ~ h_{b+2}, the
original output of b+1, so every other kept layer still sees its original input and keeps
its original (or AdaPTwin twin's layer-wise) training target. A run at the end of the
encoder is bridged by the kept layer before it instead: layer(h_{a-1}) ~ h_n. Bridges train
on the cached hidden states (``layer_cache``), in two flavours: the dense original layer
(pruning alone) and the AdaPTwin twin of that layer (pruning + compression).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mlx_bald.compress.train.hardware import barrier, is_main
from mlx_bald.fsutil import atomic_file
from mlx_bald.compress.train.layer_cache import HiddenStates, LayerTrainConfig, relative_layer_error, train_layer
from mlx_bald.compress.ops.prune import choose_layers_to_prune, score_encoder_layers


def bridge_plan(pruned: Sequence[int], n_layers: int) -> dict[int, tuple[int, int]]:
    """{kept original layer j: (src, dst)}: after pruning, layer j must map boundary h_src
    to h_dst (boundary k = input of original layer k; h_n = last layer's output).
    Layers not in the plan keep (j, j + 1)."""
    drop = sorted(set(pruned))
    if any(not 0 <= i < n_layers for i in drop) or len(drop) >= n_layers:
        raise ValueError(f"cannot prune {list(pruned)} from {n_layers} layers")
    runs: list[list[int]] = []
    for i in drop:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    plan: dict[int, tuple[int, int]] = {}
    for run in runs:
        a, b = run[0], run[-1]
        if b + 1 < n_layers:
            plan[b + 1] = (a, b + 2)
        else:  # trailing run: the kept layer before it absorbs it
            j = a - 1
            plan[j] = (plan.get(j, (j, j + 1))[0], n_layers)
    return plan


def choose_pruned(model: nn.Module, feature_batches: Sequence[torch.Tensor], n_drop: int,
                  protect: Sequence[int] = ()) -> tuple[list[int], list[float]]:
    """(layers to drop, per-layer scores) for ``n_drop`` layers; ([], scores) for 0."""
    scores = score_encoder_layers(model, feature_batches)
    return (choose_layers_to_prune(scores, n_drop, protect) if n_drop else []), scores


def train_bridges(base: nn.Module, twin: Callable[[int], nn.Module] | None, states: HiddenStates,
                  ids: Sequence[str], heldout: Sequence[str], pruned: Sequence[int], cfg: LayerTrainConfig,
                  work: str | os.PathLike, progress: bool = True,
                  frames: Mapping[str, int] | None = None) -> dict[str, dict]:
    """Train every bridge of ``bridge_plan(pruned)``: the dense layer (initialised from
    ``base``) and, when ``twin`` is given, the twin (initialised from ``twin(j)``, the
    layer-wise fine-tuned twin of layer j). Each result is saved under ``work`` and reused
    when present. Returns {file stem: stats with the held-out relative errors (all frames,
    and with ``frames`` also the speech frames only)}."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    n = len(base.model.encoder.layers)
    out: dict[str, dict] = {}
    for j, (src, dst) in bridge_plan(pruned, n).items():
        kinds: dict[str, Callable[[], nn.Module]] = {"dense": lambda j=j: copy.deepcopy(base.model.encoder.layers[j])}
        if twin is not None:
            kinds["twin"] = lambda j=j: twin(j)
        for kind, make in kinds.items():
            stem = bridge_name(kind, j, src, dst)
            if (work / f"{stem}.safetensors").is_file() and (work / f"{stem}.json").is_file():
                out[stem] = json.loads((work / f"{stem}.json").read_text())
                continue
            layer, t0 = make(), time.time()
            before = relative_layer_error(layer, states, heldout, src, dst)
            stats = train_layer(layer, states, ids, src, dst, cfg, work / f"{stem}.ckpt",
                                desc=f"bridge {kind} layer {j}: h{src}->h{dst}", progress=progress)
            stats |= {"layer": j, "src": src, "dst": dst, "kind": kind, "heldout_rel_error_before": before,
                      "seconds": round(time.time() - t0, 1),
                      "heldout_rel_error": relative_layer_error(layer, states, heldout, src, dst)}
            if frames is not None:
                stats["heldout_speech_rel_error"] = relative_layer_error(layer, states, heldout, src, dst, frames=frames)
            if is_main():
                with atomic_file(work / f"{stem}.safetensors") as tmp:
                    save_file({k: v.contiguous().cpu() for k, v in layer.state_dict().items()}, str(tmp))
                with atomic_file(work / f"{stem}.json") as tmp:
                    tmp.write_text(json.dumps(stats, indent=1))
                (work / f"{stem}.ckpt").unlink(missing_ok=True)
            barrier()
            out[stem] = stats
    return out


def bridge_name(kind: str, layer: int, src: int, dst: int) -> str:
    return f"bridge-{kind}-layer{layer}-h{src}-h{dst}"


def load_bridge(layer: nn.Module, work: str | os.PathLike, kind: str, j: int, src: int, dst: int) -> nn.Module:
    """Load a trained bridge into ``layer`` (a module of the right kind and shape)."""
    layer.load_state_dict(load_file(str(Path(work) / f"{bridge_name(kind, j, src, dst)}.safetensors")))
    return layer
