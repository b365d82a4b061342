"""Encoder layer pruning: drop whole encoder layers that change their input the least."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def prune_encoder(model: nn.Module, drop: Sequence[int]) -> nn.Module:
    """Remove ORIGINAL encoder layers ``drop`` from a WhisperForConditionalGeneration (in
    place); the rest keep their order and are renumbered 0..n-1."""
    layers = model.model.encoder.layers
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad or len(set(drop)) != len(drop):
        raise ValueError(f"encoder layers to drop {list(drop)} must be distinct, in 0..{n - 1}")
    if len(drop) >= n:
        raise ValueError("cannot drop every encoder layer")
    keep = [layers[i] for i in range(n) if i not in set(drop)]
    model.model.encoder.layers = nn.ModuleList(keep)
    model.config.encoder_layers = len(keep)
    return model


@torch.no_grad()
def score_encoder_layers(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """Per encoder layer: mean over batches and frames of 1 - cos(layer input, layer output).
    Small = the layer barely changes the residual stream (a pruning candidate).
    ``batches`` yields input_features [B, n_mels, T]."""
    layers = model.model.encoder.layers
    totals = [0.0] * len(layers)
    count = 0
    seen: dict[int, torch.Tensor] = {}

    def pre(i: int):
        def fn(_m, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return fn

    def post(i: int):
        def fn(_m, _args, _kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            totals[i] += float((1 - F.cosine_similarity(seen[i].double(), y.double(), dim=-1)).mean())
        return fn

    handles = [l.register_forward_pre_hook(pre(i), with_kwargs=True) for i, l in enumerate(layers)]
    handles += [l.register_forward_hook(post(i), with_kwargs=True) for i, l in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for feats in batches:
            model.model.encoder(feats)
            count += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("no batches to score encoder layers on")
    return [t / count for t in totals]


def choose_layers_to_prune(scores: Sequence[float], n_drop: int, protect: Sequence[int] = ()) -> list[int]:
    """The ``n_drop`` lowest-scoring layers (never those in ``protect``), ascending."""
    ranked = sorted((s, i) for i, s in enumerate(scores) if i not in set(protect))
    if n_drop > len(ranked):
        raise ValueError(f"asked to drop {n_drop} of {len(ranked)} droppable layers")
    return sorted(i for _, i in ranked[:n_drop])
