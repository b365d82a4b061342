"""Factored attention as a Metal kernel (``mx.fast.metal_kernel``), for Apple GPUs.

The source is ``factored_attention.metal`` (package data). Building the kernel object
works on any platform; calling it needs MLX's Metal back-end.
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

from .common import INPUT_NAMES, kernel_source, launch_args


@lru_cache(maxsize=1)
def build_kernel():
    """The kernel object (built once; MLX JIT-compiles it per template on first call)."""
    header, body = kernel_source("factored_attention.metal")
    return mx.fast.metal_kernel(
        name="mlx_bald_factored_attention",
        input_names=INPUT_NAMES,
        output_names=["out"],
        source=body,
        header=header,
        ensure_row_contiguous=False,  # the kernel reads q/k/v through their strides
    )


def metal_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
                    mask: mx.array | None = None,
                    kv_len: int | mx.array | None = None) -> mx.array:
    launch = launch_args(q, k, v, scale=scale, mask=mask, kv_len=kv_len)
    (out,) = build_kernel()(
        inputs=launch.inputs,
        template=launch.template,
        grid=launch.grid,
        threadgroup=launch.threadgroup,
        output_shapes=[launch.output_shape],
        output_dtypes=[launch.dtype],
    )
    return out
