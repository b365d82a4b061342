"""AdaPTwin layer-wise fine-tuning: each compressed layer learns to reproduce the ORIGINAL
layer's output from the ORIGINAL layer's input (MSE), independently of the others.

Activations are streamed: per batch, the original model runs once (no grad) with hooks that
copy the chosen layers' inputs and outputs, the compressed layers take one step on them,
and the copies are dropped. Batches are dicts for WhisperForConditionalGeneration:
{"input_features": [B, n_mels, T]} plus "decoder_input_ids" when decoder layers train.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .twins import LowRankLinear, LowRankWhisperAttention


@dataclass
class LayerwiseConfig:
    lr: float = 1e-4
    epochs: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0


class _StopForward(Exception):
    """Raised by a hook once the last needed activation is captured (saves the rest)."""


def _stack(model: nn.Module, side: str) -> nn.ModuleList:
    return model.model.encoder.layers if side == "encoder" else model.model.decoder.layers


def compressed_layer_keys(model: nn.Module) -> list[str]:
    """"encoder.blocks.i" / "decoder.blocks.i" of every layer holding a low-rank module."""
    keys = []
    for side in ("encoder", "decoder"):
        for i, layer in enumerate(_stack(model, side)):
            if any(isinstance(m, (LowRankWhisperAttention, LowRankLinear)) for m in layer.modules()):
                keys.append(f"{side}.blocks.{i}")
    return keys


def layer_pairs(original: nn.Module, compressed: nn.Module,
                keys: Sequence[str] | None = None) -> dict[str, tuple[nn.Module, nn.Module]]:
    """{key: (original layer, compressed layer)}; both models must have the same layer counts
    (layer-wise tuning pairs layer i with layer i: no merging or pruning in between)."""
    keys = list(keys) if keys is not None else compressed_layer_keys(compressed)
    out = {}
    for key in keys:
        side, _, idx = key.split(".")
        a, b = _stack(original, side), _stack(compressed, side)
        if len(a) != len(b):
            raise ValueError(f"{side}: {len(a)} original vs {len(b)} compressed layers; pass layers explicitly")
        out[key] = (a[int(idx)], b[int(idx)])
    return out


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
    """Run ``original`` on ``batch`` and return {key: (args, kwargs, output)} of each layer."""
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
    device = next(original.parameters()).device
    feats = batch["input_features"].to(device=device, dtype=next(original.parameters()).dtype)
    try:
        if any(k.startswith("decoder") for k in layers):
            original(input_features=feats, decoder_input_ids=batch["decoder_input_ids"].to(device), use_cache=False)
        else:
            original.model.encoder(feats)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_mse(layer: nn.Module, args: tuple, kwargs: dict, target: torch.Tensor) -> torch.Tensor:
    out = layer(*args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    return F.mse_loss(out.float(), target.float())


def layerwise_finetune(original: nn.Module, compressed: nn.Module, make_batches: Callable[[int], Iterable[dict]],
                       cfg: LayerwiseConfig | None = None, keys: Sequence[str] | None = None,
                       one_at_a_time: bool = True, progress: bool = True) -> dict[str, float]:
    """Fine-tune the compressed layers ``keys`` (default: every layer with a low-rank module)
    of ``compressed`` against ``original``. ``one_at_a_time`` trains layer by layer (one
    optimiser alive, the original forward stops at the layer); otherwise every layer steps on
    each batch (the layers are independent, so the result is the same objective).
    All of a layer's parameters train (spectral and LoRA, as in the paper).
    Returns the mean MSE per layer over the last epoch."""
    from tqdm.auto import tqdm

    cfg = cfg or LayerwiseConfig()
    torch.manual_seed(cfg.seed)
    pairs = layer_pairs(original, compressed, keys)
    original.eval()
    for p in compressed.parameters():
        p.requires_grad_(False)
    result: dict[str, float] = {}

    def run(group: dict[str, tuple[nn.Module, nn.Module]], label: str) -> None:
        opts = {}
        for key, (_, layer) in group.items():
            layer.train()
            for p in layer.parameters():
                p.requires_grad_(True)
            opts[key] = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        originals = {k: orig for k, (orig, _) in group.items()}
        for epoch in range(cfg.epochs):
            totals = {k: 0.0 for k in group}
            n = 0
            for batch in tqdm(make_batches(epoch), desc=f"{label} epoch {epoch}", disable=not progress, leave=False):
                io = capture_layer_io(original, originals, batch)
                for key, (args, kwargs, target) in io.items():
                    layer = group[key][1]
                    loss = layer_mse(layer, args, kwargs, target)
                    opts[key].zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(layer.parameters(), cfg.grad_clip)
                    opts[key].step()
                    totals[key] += loss.item()
                n += 1
            if n == 0:
                raise ValueError("the batch source yielded nothing")
            result.update({k: t / n for k, t in totals.items()})
        for _, layer in group.values():
            layer.eval()
            for p in layer.parameters():
                p.requires_grad_(False)

    if one_at_a_time:
        for key, pair in pairs.items():
            run({key: pair}, key)
    else:
        run(pairs, "layers")
    return result


@torch.no_grad()
def layer_errors(original: nn.Module, compressed: nn.Module, batches: Iterable[dict],
                 keys: Sequence[str] | None = None) -> dict[str, float]:
    """Mean MSE of each compressed layer against the original on the original's inputs:
    the per-layer error the paper uses to decide which layers to swap back to dense."""
    pairs = layer_pairs(original, compressed, keys)
    totals = {k: 0.0 for k in pairs}
    n = 0
    for batch in batches:
        io = capture_layer_io(original, {k: o for k, (o, _) in pairs.items()}, batch)
        for key, (args, kwargs, target) in io.items():
            totals[key] += layer_mse(pairs[key][1].eval(), args, kwargs, target).item()
        n += 1
    return {k: t / max(n, 1) for k, t in totals.items()}
