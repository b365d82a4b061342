"""What the Metal and CUDA factored-attention kernels share: their source files, the
checks of what they support, and the inputs/launch geometry of one call."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlx.core as mx

MAX_HEAD_DIM = 256  # per-thread register arrays of DK and DV floats
INPUT_NAMES = ["q", "k", "v", "kv_len", "mask", "dims"]
BODY_MARKER = "// @@BODY@@"


@lru_cache(maxsize=None)
def kernel_source(filename: str) -> tuple[str, str]:
    """(header, body) of a kernel file shipped with the package; no marker = all body."""
    text = (Path(__file__).parent / filename).read_text()
    if BODY_MARKER in text:
        header, body = text.split(BODY_MARKER, 1)
        return header, body
    return "", text


def unsupported_reason(q: mx.array, k: mx.array, v: mx.array,
                       mask: mx.array | None) -> str | None:
    """Why the kernels cannot take these inputs (None when they can)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return "q, k, v must be 4-D [B, H, L, d]"
    if k.shape[:3] != v.shape[:3] or q.shape[1] != k.shape[1] or q.shape[-1] != k.shape[-1]:
        return f"incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}"
    if k.shape[0] not in (1, q.shape[0]):
        return f"k/v batch {k.shape[0]} does not broadcast to q batch {q.shape[0]}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM}"
    if mask is not None and mask.ndim > 2 and any(n != 1 for n in mask.shape[:-2]):
        return "only a mask shared by all batches and heads ([Lq, Lk]) is supported"
    return None


@dataclass
class Launch:
    inputs: list[mx.array]
    template: list[tuple[str, object]]
    grid: tuple[int, int, int]
    threadgroup: tuple[int, int, int]
    output_shape: tuple[int, int, int, int]
    dtype: mx.Dtype


def launch_args(q: mx.array, k: mx.array, v: mx.array, *, scale: float,
                mask: mx.array | None, kv_len: int | mx.array | None) -> Launch:
    """Inputs and geometry: one threadgroup of TG threads per (query, head, batch)."""
    n_batch, n_heads, n_queries, d_qk = q.shape
    n_keys, d_vo = k.shape[2], v.shape[-1]
    dtype = q.dtype
    if scale != 1.0:
        q = q * scale
    if k.shape[0] != n_batch:  # a broadcast view costs no copy: the kernels read strides
        k = mx.broadcast_to(k, (n_batch, *k.shape[1:]))
        v = mx.broadcast_to(v, (n_batch, *v.shape[1:]))
    k, v = k.astype(dtype), v.astype(dtype)
    if kv_len is None:
        kv_len = n_keys
    lengths = mx.array([kv_len]) if isinstance(kv_len, int) else kv_len.reshape(-1)
    lengths = mx.contiguous(mx.broadcast_to(lengths.astype(mx.int32), (n_batch,)))
    if mask is None:
        mask_arr = mx.zeros((1,), dtype=mx.float32)
    else:
        mask_arr = mx.contiguous(mx.broadcast_to(mask.reshape(mask.shape[-2:]),
                                                 (n_queries, n_keys)).astype(mx.float32))
    dims = mx.array([n_queries, n_keys], dtype=mx.int32)
    tg = 32 if n_keys <= 128 else 128
    return Launch(
        inputs=[q, k, v, lengths, mask_arr, dims],
        template=[("T", dtype), ("DK", d_qk), ("DV", d_vo), ("TG", tg),
                  ("HAS_MASK", mask is not None)],
        grid=(n_queries * tg, n_heads, n_batch),
        threadgroup=(tg, 1, 1),
        output_shape=(n_batch, n_heads, n_queries, d_vo),
        dtype=dtype,
    )


def make_kernel(factory, source_file: str):
    """A kernel object from ``mx.fast.metal_kernel`` or ``mx.fast.cuda_kernel`` (``factory``)
    and its package source; the two back-ends share names, inputs and launch shape."""
    header, body = kernel_source(source_file)
    return factory(
        name="mlx_bald_factored_attention",
        input_names=INPUT_NAMES,
        output_names=["out"],
        source=body,
        header=header,
        ensure_row_contiguous=False,  # the kernel reads q/k/v through their strides
    )


def run_kernel(kernel, q: mx.array, k: mx.array, v: mx.array, *, scale: float,
               mask: mx.array | None, kv_len: int | mx.array | None) -> mx.array:
    launch = launch_args(q, k, v, scale=scale, mask=mask, kv_len=kv_len)
    (out,) = kernel(
        inputs=launch.inputs,
        template=launch.template,
        grid=launch.grid,
        threadgroup=launch.threadgroup,
        output_shapes=[launch.output_shape],
        output_dtypes=[launch.dtype],
    )
    return out
