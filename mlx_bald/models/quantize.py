"""Weight quantization of a Whisper (mlx.nn.quantize, affine, as mlx-whisper folders).

Quantized: every Linear and the dense token embedding whose input width divides by the
group size. Convolutions, layer norms and a factored embedding stay in float.
"""
from __future__ import annotations

from collections.abc import Container

import mlx.nn as nn


def quantizable(module: nn.Module, group_size: int, bits: int) -> bool:
    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    n_in = module.weight.shape[-1]
    return n_in % group_size == 0 and (n_in * bits) % 32 == 0


def quantize_model(model: nn.Module, bits: int, group_size: int = 64,
                   only: Container[str] | None = None) -> nn.Module:
    """Quantize in place; ``only`` restricts it to those module paths (used when loading)."""
    def predicate(path: str, module: nn.Module) -> bool:
        return quantizable(module, group_size, bits) and (only is None or path in only)

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return model
