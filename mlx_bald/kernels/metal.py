"""Factored attention as a Metal kernel (``mx.fast.metal_kernel``), for Apple GPUs.

The source is ``factored_attention.metal`` (package data). Building the kernel object
works on any platform; calling it needs MLX's Metal back-end.
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

from .common import make_kernel, run_kernel


@lru_cache(maxsize=1)
def build_kernel():
    """The kernel object (built once; MLX JIT-compiles it per template on first call)."""
    return make_kernel(mx.fast.metal_kernel, "factored_attention.metal")


def metal_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
                    mask: mx.array | None = None,
                    kv_len: int | mx.array | None = None) -> mx.array:
    return run_kernel(build_kernel(), q, k, v, scale=scale, mask=mask, kv_len=kv_len)
