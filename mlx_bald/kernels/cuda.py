"""Factored attention as a CUDA kernel (``mx.fast.cuda_kernel``), for NVIDIA GPUs.

The source is ``factored_attention.cu`` (package data): warp helpers above the body
marker, the kernel body below. Calling it needs MLX's CUDA back-end (``mlx[cuda12]``).
"""
from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

from .common import INPUT_NAMES, kernel_source, launch_args


def cuda_kernels_supported() -> bool:
    """Whether this MLX build has ``mx.fast.cuda_kernel`` at all."""
    return hasattr(mx.fast, "cuda_kernel")


@lru_cache(maxsize=1)
def build_kernel():
    header, body = kernel_source("factored_attention.cu")
    return mx.fast.cuda_kernel(
        name="mlx_bald_factored_attention",
        input_names=INPUT_NAMES,
        output_names=["out"],
        source=body,
        header=header,
        ensure_row_contiguous=False,  # the kernel reads q/k/v through their strides
    )


def cuda_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
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
