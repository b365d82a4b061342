"""BaldWhisper decoder layer merging: groups of adjacent decoder layers become one layer.

Every parameter of a WhisperDecoderLayer (self-attention, cross-attention, layer norms,
FFN) is merged by a function from ``MERGE_FUNCTIONS`` (``weighted_average`` first:
theta = sum(w_i theta_i) / sum(w_i)); new merge methods register themselves there.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mlx_bald.spec import MergeGroup, SpecError

MergeFn = Callable[[Sequence[torch.Tensor], Sequence[float]], torch.Tensor]
MERGE_FUNCTIONS: dict[str, MergeFn] = {}


def register_merge_function(name: str) -> Callable[[MergeFn], MergeFn]:
    def deco(fn: MergeFn) -> MergeFn:
        MERGE_FUNCTIONS[name] = fn
        return fn
    return deco


@register_merge_function("weighted_average")
def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = float(sum(weights))
    acc = torch.zeros_like(tensors[0], dtype=torch.float64)
    for t, w in zip(tensors, weights):
        acc += t.double() * (w / total)
    return acc.to(tensors[0].dtype)


@torch.no_grad()
def merge_layers(layers: Sequence[nn.Module], weights: Sequence[float],
                 method: str = "weighted_average") -> nn.Module:
    """A new layer whose every parameter/buffer merges the matching ones of ``layers``.
    The layers must have identical structure and shapes (merge before low-rank compression)."""
    if method not in MERGE_FUNCTIONS:
        raise SpecError(f"unknown merge method {method!r}; known: {sorted(MERGE_FUNCTIONS)}")
    if len(layers) != len(weights):
        raise SpecError(f"{len(weights)} weights for {len(layers)} layers")
    fn = MERGE_FUNCTIONS[method]
    states = [l.state_dict() for l in layers]
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("layers to merge differ in structure (merge before low-rank compression)")
    # share (not copy) the model config the submodules point at, as the originals do
    memo = {id(m.config): m.config for m in layers[0].modules() if getattr(m, "config", None) is not None}
    merged = copy.deepcopy(layers[0], memo)
    merged.load_state_dict({k: fn([s[k] for s in states], weights) for k in keys})
    return merged


def remap_alignment_heads(heads: Sequence[Sequence[int]] | None,
                          groups: Sequence[MergeGroup]) -> list[list[int]] | None:
    """(original layer, head) pairs -> (merged layer, head): a merged layer gets the heads of
    any of its source layers, deduplicated, sorted."""
    if heads is None:
        return None
    where = {orig: new for new, g in enumerate(groups) for orig in g.layers}
    pairs = {(where[int(l)], int(h)) for l, h in heads if int(l) in where}
    return [list(p) for p in sorted(pairs)]


def _set_layer_idx(layer: nn.Module, idx: int) -> None:
    for name in ("self_attn", "encoder_attn"):
        attn = getattr(layer, name, None)
        if attn is not None:
            attn.layer_idx = idx


@torch.no_grad()
def merge_decoder(model: nn.Module, groups: Sequence[MergeGroup]) -> nn.Module:
    """Merge the decoder of a WhisperForConditionalGeneration in place, following
    ``groups`` (one per new layer, in order, covering every original layer once)."""
    decoder = model.model.decoder
    n = len(decoder.layers)
    for g in groups:
        g.validate()
    covered = [i for g in groups for i in g.layers]
    if covered != list(range(n)):
        raise SpecError(f"merge groups cover {covered}, the decoder has layers 0..{n - 1}")
    new_layers = []
    for idx, g in enumerate(groups):
        src = [decoder.layers[i] for i in g.layers]
        layer = src[0] if len(src) == 1 else merge_layers(src, g.weights, g.method)
        _set_layer_idx(layer, idx)
        new_layers.append(layer)
    decoder.layers = nn.ModuleList(new_layers)
    model.config.decoder_layers = len(new_layers)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "alignment_heads", None) is not None:
        gen.alignment_heads = remap_alignment_heads(gen.alignment_heads, groups)
    return model


def adjacent_pairs(n_layers: int, alpha: float = 0.5, beta: float = 0.5,
                   keep: Sequence[int] = ()) -> list[MergeGroup]:
    """Convenience: merge layers (0,1), (2,3), ... with shared (alpha, beta); layers in
    ``keep`` (and a trailing odd layer) stay alone."""
    groups, i = [], 0
    while i < n_layers:
        if i + 1 < n_layers and i not in keep and i + 1 not in keep:
            groups.append(MergeGroup([i, i + 1], [alpha, beta]))
            i += 2
        else:
            groups.append(MergeGroup([i], [1.0]))
            i += 1
    return groups
