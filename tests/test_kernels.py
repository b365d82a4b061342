"""Factored attention: the reference path against naive numpy, the path choice, and the
Metal / CUDA kernels (on their GPUs when present; their bodies emulated on the CPU here)."""
import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest

from mlx_bald.kernels import available_paths, factored_attention, resolve_path
from mlx_bald.kernels.common import kernel_source
from mlx_bald.kernels.dispatch import cuda_available, metal_available
from mlx_bald.kernels.reference import attention_scores, reference_attention

from kernel_emulator import compiler_available, run_kernel_body


def naive(q, k, v, scale=1.0, mask=None, kv_len=None):
    """float64 numpy attention; kv_len: per-batch counts of valid keys."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = scale * q @ np.swapaxes(k, -1, -2)
    if mask is not None:
        s = s + np.asarray(mask, np.float64)
    if kv_len is not None:
        valid = np.arange(k.shape[2])[None, :] < np.asarray(kv_len).reshape(-1, 1)
        s = np.where(valid[:, None, None, :], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(-1, keepdims=True)) @ v


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def causal(lq, lk, offset=0):
    return np.where(np.arange(lk)[None, :] <= np.arange(lq)[:, None] + offset, 0.0, -np.inf
                    ).astype(np.float32)


@pytest.mark.parametrize("r_qk,r_vo", [(8, 5), (3, 12), (16, 16)])
def test_reference_matches_naive(r_qk, r_vo):
    rng = np.random.default_rng(r_qk)
    q, k, v = rand(rng, 2, 3, 7, r_qk), rand(rng, 2, 3, 9, r_qk), rand(rng, 2, 3, 9, r_vo)
    got = reference_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.3)
    assert got.shape == (2, 3, 7, r_vo)
    assert np.abs(np.array(got) - naive(q, k, v, 0.3)).max() < 1e-5
    mask = causal(7, 9, offset=2)
    got = factored_attention(mx.array(q), mx.array(k), mx.array(v), mask=mx.array(mask),
                             path="reference")
    assert np.abs(np.array(got) - naive(q, k, v, mask=mask)).max() < 1e-5


def test_reference_growing_kv_cache_step_by_step():
    """One query per step against a preallocated buffer filled up to kv_len."""
    rng = np.random.default_rng(0)
    n_ctx, r_qk, r_vo = 10, 6, 4
    keys, values = rand(rng, 2, 3, n_ctx, r_qk), rand(rng, 2, 3, n_ctx, r_vo)
    buf_k, buf_v = mx.zeros((2, 3, n_ctx, r_qk)), mx.zeros((2, 3, n_ctx, r_vo))
    for t in range(n_ctx):
        buf_k = mx.slice_update(buf_k, mx.array(keys[:, :, t:t + 1]), mx.array([t]), axes=(2,))
        buf_v = mx.slice_update(buf_v, mx.array(values[:, :, t:t + 1]), mx.array([t]), axes=(2,))
        q = rand(rng, 2, 3, 1, r_qk)
        want = naive(q, keys[:, :, :t + 1], values[:, :, :t + 1], scale=0.5)
        for kv_len in (t + 1, mx.array([t + 1]), mx.array([t + 1, t + 1])):
            got = factored_attention(mx.array(q), buf_k, buf_v, scale=0.5, kv_len=kv_len)
            assert np.abs(np.array(got) - want).max() < 1e-5


def test_reference_per_batch_kv_len_and_broadcast_batch():
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 3, 2, 1, 4), rand(rng, 1, 2, 6, 4), rand(rng, 1, 2, 6, 7)
    lengths = np.array([2, 6, 4], dtype=np.int32)
    got = reference_attention(mx.array(q), mx.array(k), mx.array(v), kv_len=mx.array(lengths))
    kb, vb = np.broadcast_to(k, (3, 2, 6, 4)), np.broadcast_to(v, (3, 2, 6, 7))
    assert np.abs(np.array(got) - naive(q, kb, vb, kv_len=lengths)).max() < 1e-5


def test_scores_are_scaled_masked_logits():
    rng = np.random.default_rng(2)
    q, k = rand(rng, 1, 2, 3, 5), rand(rng, 1, 2, 4, 5)
    s = attention_scores(mx.array(q), mx.array(k), scale=0.25, kv_len=3)
    want = 0.25 * q @ np.swapaxes(k, -1, -2)
    assert np.abs(np.array(s)[..., :3] - want[..., :3]).max() < 1e-5
    assert np.isneginf(np.array(s)[..., 3]).all()


def test_path_choice(monkeypatch):
    monkeypatch.delenv("MLX_BALD_ATTENTION_PATH", raising=False)
    auto = resolve_path()
    assert auto == ("metal" if metal_available() else "cuda" if cuda_available() else "reference")
    assert resolve_path("reference") == "reference"
    monkeypatch.setenv("MLX_BALD_ATTENTION_PATH", "reference")
    assert resolve_path() == "reference"
    monkeypatch.setenv("MLX_BALD_ATTENTION_PATH", "bogus")
    with pytest.raises(ValueError, match="unknown attention path"):
        resolve_path()
    for path in ("metal", "cuda"):
        if path not in available_paths():
            with pytest.raises(ValueError, match="not available"):
                resolve_path(path)


def test_auto_path_falls_back_when_a_kernel_fails_its_self_check(monkeypatch):
    from mlx_bald.kernels import dispatch

    monkeypatch.delenv("MLX_BALD_ATTENTION_PATH", raising=False)
    monkeypatch.setattr(dispatch, "_self_checked", {})
    monkeypatch.setattr(dispatch, "metal_available", lambda: True)
    monkeypatch.setattr(dispatch, "cuda_available", lambda: False)

    def wrong(q, k, v, **kw):
        return reference_attention(q, k, v, **kw) + 1.0

    monkeypatch.setattr(dispatch, "_kernel", lambda path: wrong)
    with pytest.warns(UserWarning, match="disagrees"):
        assert resolve_path() == "reference"
    assert resolve_path("metal") == "metal"  # named explicitly: used as is
    monkeypatch.setattr(dispatch, "_self_checked", {})
    monkeypatch.setattr(dispatch, "_kernel", lambda path: reference_attention)
    assert resolve_path() == "metal"


@pytest.mark.skipif(metal_available(), reason="checks the fallback where Metal is absent")
def test_self_check_of_an_unrunnable_kernel_warns(monkeypatch):
    from mlx_bald.kernels import dispatch

    monkeypatch.setattr(dispatch, "_self_checked", {})
    with pytest.warns(UserWarning, match="metal attention kernel failed"):
        assert not dispatch.self_check("metal")


def test_metal_kernel_object_builds():
    from mlx_bald.kernels.metal import build_kernel

    assert build_kernel() is not None  # building needs no GPU; calling does


def _gpu_check(path: str):
    rng = np.random.default_rng(3)
    for lq, lk, r_qk, r_vo, masked in ((1, 448, 24, 40, False), (5, 9, 8, 6, True),
                                       (30, 300, 64, 64, False)):
        q, k, v = rand(rng, 2, 3, lq, r_qk), rand(rng, 2, 3, lk, r_qk), rand(rng, 2, 3, lk, r_vo)
        mask = causal(lq, lk, offset=lk - lq) if masked else None
        kv_len = mx.array([lk - 1, lk // 2])
        got = factored_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.7,
                                 mask=None if mask is None else mx.array(mask), kv_len=kv_len,
                                 path=path)
        want = naive(q, k, v, 0.7, mask, np.array(kv_len))
        assert np.abs(np.array(got) - want).max() < 1e-4


@pytest.mark.skipif(not metal_available(), reason="no Metal back-end (MLX on Linux/CPU)")
def test_metal_path_matches_naive():
    _gpu_check("metal")


@pytest.mark.skipif(not cuda_available(), reason="no CUDA back-end in this MLX build")
def test_cuda_path_matches_naive():
    _gpu_check("cuda")


@pytest.mark.skipif(not compiler_available(), reason="needs g++ to emulate the kernels")
@pytest.mark.parametrize("kind,tg,masked", [("metal", 128, True), ("metal", 32, False),
                                            ("cuda", 128, True)])
def test_kernel_body_emulated_on_cpu(kind, tg, masked):
    """The shipped kernel text, compiled in a CPU shim (threads + barriers for simd/warp
    reductions): strided k, r_qk != r_vo, per-batch kv_len, an additive causal mask."""
    rng = np.random.default_rng(4)
    b, h, lq, lk, r_qk, r_vo = 2, 2, 3, 150, 8, 5
    q = rand(rng, b, h, lq, r_qk)
    k = rand(rng, b, lk, h, r_qk).transpose(0, 2, 1, 3)  # a strided view, as the kernels get
    v = rand(rng, b, h, lk, r_vo)
    kv_len = np.array([120, 150], dtype=np.int32)
    mask = causal(lq, lk, offset=140) if masked else None
    got = run_kernel_body(kind, q, k, v, kv_len, mask, tg)
    assert np.abs(got - naive(q, k, v, mask=mask, kv_len=kv_len)).max() < 1e-5


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """The CUDA body in the signature mx.fast.cuda_kernel generates, for half precision."""
    header, body = kernel_source("factored_attention.cu")
    args = ",\n".join([f"const __half* {n}, const __grid_constant__ Strides {n}_strides"
                       for n in "qkv"] + ["const int32_t* kv_len", "const float* mask",
                                          "const int32_t* dims", "__half* out"])
    src = ("#include <cuda_fp16.h>\n#include <cuda/std/array>\n"
           "using Strides = cuda::std::array<int64_t, 10>;\n" + header +
           f"\n__global__ void fa({args}) {{\n using T = __half;\n constexpr int DK = 64;\n"
           " constexpr int DV = 48;\n constexpr int TG = 128;\n constexpr bool HAS_MASK = true;\n"
           + body + "\n}\n")
    (tmp_path / "fa.cu").write_text(src)
    result = subprocess.run(["nvcc", "-ptx", "-arch=sm_80", "-std=c++17", str(tmp_path / "fa.cu"),
                             "-o", str(tmp_path / "fa.ptx")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
