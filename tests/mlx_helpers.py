"""Tiny random Whisper models and a numpy version of the compression math (product-twin
SVD, low-rank FFN, factored embedding), shared by the MLX runtime tests."""
from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_whisper.whisper import ModelDimensions

from mlx_bald.models.whisper import Whisper
from mlx_bald.spec import CompressionSpec

TINY = ModelDimensions(n_mels=16, n_audio_ctx=12, n_audio_state=64, n_audio_head=4,
                       n_audio_layer=2, n_vocab=100, n_text_ctx=16, n_text_state=64,
                       n_text_head=4, n_text_layer=2)


def tiny_dims(**changes) -> ModelDimensions:
    return replace(TINY, **changes)


def random_params(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float parameters (layer-norm weights near 1) for every parameter of ``model``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in tree_flatten(model.parameters()):
        if name == "alignment_heads":
            continue
        if name.endswith("ln.weight") or name.endswith("ln_post.weight"):
            out[name] = (1 + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            out[name] = (0.15 * rng.standard_normal(value.shape)).astype(np.float32)
    return out


def set_params(model, params: dict[str, np.ndarray]):
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in params.items()]))
    mx.eval(model.parameters())
    return model


def random_model(dims: ModelDimensions, spec: CompressionSpec | None = None, seed: int = 0):
    model = Whisper(dims, spec)
    return set_params(model, random_params(model, seed))


def random_mel(dims: ModelDimensions, batch: int = 1, seed: int = 1) -> mx.array:
    rng = np.random.default_rng(seed)
    return mx.array(rng.standard_normal((batch, 2 * dims.n_audio_ctx, dims.n_mels)).astype(np.float32))


def _svd(m: np.ndarray):
    try:  # numpy's threaded LAPACK crawls on a busy 2-core machine (40+ ms for 65x64)
        import torch
    except ImportError:
        return np.linalg.svd(m.astype(np.float64), full_matrices=False)
    u, s, vt = torch.linalg.svd(torch.from_numpy(m.astype(np.float64)), full_matrices=False)
    return u.numpy(), s.numpy(), vt.numpy()


def _split(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """m ~= left @ right with rank r (balanced SVD factors)."""
    u, s, vt = _svd(m)
    root = np.sqrt(s[:r])
    return u[:, :r] * root, root[:, None] * vt[:r]


def product_twin(params: dict, prefix: str, n_head: int, qk_rank: int, vo_rank: int) -> dict:
    """Dense attention ``prefix`` (e.g. "decoder.blocks.0.cross_attn") -> low-rank weights
    per the brief: M_qk,h = s [Wq_h^T; bq_h] Wk_h, M_vo,h = Wv_h^T Wo[:, h]^T."""
    wq, bq = params[f"{prefix}.query.weight"], params[f"{prefix}.query.bias"]
    wk = params[f"{prefix}.key.weight"]
    wv, bv = params[f"{prefix}.value.weight"], params[f"{prefix}.value.bias"]
    wo, bo = params[f"{prefix}.out.weight"], params[f"{prefix}.out.bias"]
    d = wq.shape[1]
    dh = d // n_head
    s = dh ** -0.5
    q_w, q_b, k_w, v_w, o_w = [], [], [], [], []
    bo_new = bo.astype(np.float64).copy()
    for h in range(n_head):
        rows = slice(h * dh, (h + 1) * dh)
        m_qk = s * np.concatenate([wq[rows].T, bq[rows][None]], axis=0) @ wk[rows]
        left, right = _split(m_qk, qk_rank)
        q_w.append(left[:d].T)
        q_b.append(left[d])
        k_w.append(right)
        m_vo = wv[rows].T @ wo[:, rows].T
        left, right = _split(m_vo, vo_rank)
        v_w.append(left.T)
        o_w.append(right.T)
        bo_new += wo[:, rows] @ bv[rows]
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return {f"{prefix}.query.weight": f32(np.concatenate(q_w)),
            f"{prefix}.query.bias": f32(np.concatenate(q_b)),
            f"{prefix}.key.weight": f32(np.concatenate(k_w)),
            f"{prefix}.value.weight": f32(np.concatenate(v_w)),
            f"{prefix}.out.weight": f32(np.concatenate(o_w, axis=1)),
            f"{prefix}.out.bias": f32(bo_new)}


def low_rank_linear(params: dict, prefix: str, rank: int) -> dict:
    """Dense ``prefix`` (e.g. "encoder.blocks.0.mlp1") -> prefix.down / prefix.up."""
    up, down = _split(params[f"{prefix}.weight"], rank)
    return {f"{prefix}.down.weight": down.astype(np.float32),
            f"{prefix}.up.weight": up.astype(np.float32),
            f"{prefix}.up.bias": params[f"{prefix}.bias"]}


def compress_params(params: dict, dims: ModelDimensions, spec: CompressionSpec) -> dict:
    """Apply the spec's low-rank attention / FFN / embedding to dense parameters of a model
    that already has the spec's (merged, pruned) block counts."""
    out = dict(params)
    for key, rank in spec.attention.items():
        n_head = dims.n_audio_head if key.startswith("encoder") else dims.n_text_head
        for name in ("query.weight", "query.bias", "key.weight", "value.weight", "value.bias",
                     "out.weight", "out.bias"):
            out.pop(f"{key}.{name}")
        out.update(product_twin(params, key, n_head, rank.qk_rank, rank.vo_rank))
    for key, ffn in spec.ffn.items():
        block = key[: -len(".mlp")]
        for name, r in (("mlp1", ffn.fc1_rank), ("mlp2", ffn.fc2_rank)):
            if r is not None:
                out.pop(f"{block}.{name}.weight")
                out.pop(f"{block}.{name}.bias")
                out.update(low_rank_linear(params, f"{block}.{name}", r))
    if spec.embedding_rank:
        a, b = _split(out.pop("decoder.token_embedding.weight"), spec.embedding_rank)
        out["decoder.token_embedding.weight_a"] = a.astype(np.float32)
        out["decoder.token_embedding.weight_b"] = b.astype(np.float32)
    return out


def max_diff(a, b) -> float:
    return float(np.abs(np.array(a, dtype=np.float64) - np.array(b, dtype=np.float64)).max())
