"""Factored attention in plain MLX ops: the CPU path and the oracle for the kernels.

Shapes: q [B, H, Lq, r_qk], k [B, H, Lk, r_qk], v [B, H, Lk, r_vo] -> [B, H, Lq, r_vo].
q/k and v head dims may differ (product-twin attention). ``scale`` multiplies the scores
(1.0 when Whisper's 1/sqrt(d_head) is folded into the query weights). ``mask`` is additive
and broadcasts against [B, H, Lq, Lk]; ``kv_len`` (int, or int array [B] or [1]) marks keys
at index >= kv_len as absent, for preallocated caches that are only partly filled.
"""
from __future__ import annotations

import mlx.core as mx


def _valid_keys(kv_len: int | mx.array, n_keys: int) -> mx.array:
    """Boolean [B or 1, 1, 1, Lk]: True where the key position is filled."""
    lengths = mx.array([kv_len]) if isinstance(kv_len, int) else kv_len.reshape(-1)
    valid = mx.arange(n_keys)[None, :] < lengths[:, None]
    return valid[:, None, None, :]


def attention_scores(q: mx.array, k: mx.array, *, scale: float = 1.0,
                     mask: mx.array | None = None,
                     kv_len: int | mx.array | None = None) -> mx.array:
    """Pre-softmax scores ``scale * q k^T + mask`` [B, H, Lq, Lk]; absent keys are -inf."""
    if scale != 1.0:
        q = q * scale
    scores = q @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    if kv_len is not None:
        scores = mx.where(_valid_keys(kv_len, k.shape[-2]), scores,
                          mx.array(-mx.inf, dtype=scores.dtype))
    return scores


def reference_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
                        mask: mx.array | None = None,
                        kv_len: int | mx.array | None = None) -> mx.array:
    """softmax(scale * q k^T + mask) v, with keys beyond ``kv_len`` ignored."""
    scores = attention_scores(q, k, scale=scale, mask=mask, kv_len=kv_len)
    # precise: the softmax accumulates in float32 for half-precision inputs
    return mx.softmax(scores, axis=-1, precise=True) @ v
