"""Factored attention as a CUDA kernel (``mx.fast.cuda_kernel``), for NVIDIA GPUs.

The source is ``factored_attention.cu`` (package data): warp helpers above the body
marker, the kernel body below. Calling it needs MLX's CUDA back-end (``mlx[cuda12]``).
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

from .common import make_kernel, run_kernel


def cuda_kernels_supported() -> bool:
    """Whether this MLX build has ``mx.fast.cuda_kernel`` at all."""
    return hasattr(mx.fast, "cuda_kernel")


@lru_cache(maxsize=1)
def build_kernel():
    """The kernel object (built once; MLX JIT-compiles it per template on first call)."""
    return make_kernel(mx.fast.cuda_kernel, "factored_attention.cu")


def cuda_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
                   mask: mx.array | None = None,
                   kv_len: int | mx.array | None = None) -> mx.array:
    return run_kernel(build_kernel(), q, k, v, scale=scale, mask=mask, kv_len=kv_len)
