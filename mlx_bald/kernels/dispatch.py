"""One entry point for factored attention; picks the reference, Metal or CUDA path.

Order of precedence: the ``path`` argument, then ``$MLX_BALD_ATTENTION_PATH``
(reference | metal | cuda | auto), then auto: Metal when ``mx.metal.is_available()``,
CUDA when ``mx.cuda.is_available()``, else the reference path (plain MLX ops, the CPU path).
Inputs a kernel cannot take (e.g. a per-head mask) go to the reference path.
In auto mode a GPU kernel is used only after it passed a one-time self-check against the
reference (``self_check``), so a kernel that fails to build on some machine costs speed,
never a crash; a path named explicitly is used as is.
"""
from __future__ import annotations

import os
import warnings

import mlx.core as mx

from .common import unsupported_reason
from .reference import reference_attention

PATHS = ("reference", "metal", "cuda")
ENV_VAR = "MLX_BALD_ATTENTION_PATH"


def metal_available() -> bool:
    return mx.metal.is_available()


def cuda_available() -> bool:
    return hasattr(mx, "cuda") and mx.cuda.is_available() and hasattr(mx.fast, "cuda_kernel")


def available_paths() -> list[str]:
    """Paths that can run on this machine, reference first."""
    return ["reference"] + (["metal"] if metal_available() else []) + (
        ["cuda"] if cuda_available() else [])


_self_checked: dict[str, bool] = {}


def self_check(path: str) -> bool:
    """Run the ``path`` kernel once on a small problem and compare it with the reference
    (cached per process). Call it outside mx.compile tracing, e.g. when building a model."""
    if path not in _self_checked:
        try:
            keys = mx.random.split(mx.random.key(0), 3)
            q = mx.random.normal((2, 2, 3, 8), key=keys[0])
            k = mx.random.normal((2, 2, 40, 8), key=keys[1])
            v = mx.random.normal((2, 2, 40, 4), key=keys[2])
            mask = mx.where(mx.arange(40)[None] <= mx.arange(3)[:, None] + 30, 0.0, -mx.inf)
            kw = dict(scale=0.5, mask=mask, kv_len=mx.array([40, 25]))
            got = _kernel(path)(q, k, v, **kw)
            ok = bool(mx.allclose(got, reference_attention(q, k, v, **kw), atol=1e-4).item())
            if not ok:
                warnings.warn(f"the {path} attention kernel disagrees with the reference; "
                              "using the reference path")
        except Exception as e:  # a kernel that does not build here must not break inference
            warnings.warn(f"the {path} attention kernel failed ({e}); using the reference path")
            ok = False
        _self_checked[path] = ok
    return _self_checked[path]


def _kernel(path: str):
    if path == "metal":
        from .metal import metal_attention
        return metal_attention
    from .cuda import cuda_attention
    return cuda_attention


def resolve_path(path: str | None = None) -> str:
    """The path a call will take; raises ValueError for unknown or unavailable paths."""
    choice = (path or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if choice == "auto":
        for gpu in ("metal", "cuda"):
            if gpu in available_paths() and self_check(gpu):
                return gpu
        return "reference"
    if choice not in PATHS:
        raise ValueError(f"unknown attention path {choice!r}; expected one of "
                         f"{', '.join(PATHS)} or auto (from the argument or ${ENV_VAR})")
    if choice not in available_paths():
        raise ValueError(f"attention path {choice!r} is not available here "
                         f"(available: {', '.join(available_paths())})")
    return choice


def factored_attention(q: mx.array, k: mx.array, v: mx.array, *, scale: float = 1.0,
                       mask: mx.array | None = None, kv_len: int | mx.array | None = None,
                       path: str | None = None) -> mx.array:
    """softmax(scale * q k^T + mask) v over the first ``kv_len`` keys.

    q [B, H, Lq, r_qk], k [B or 1, H, Lk, r_qk], v [B or 1, H, Lk, r_vo] -> [B, H, Lq, r_vo].
    """
    chosen = resolve_path(path)
    if chosen != "reference" and unsupported_reason(q, k, v, mask) is None:
        return _kernel(chosen)(q, k, v, scale=scale, mask=mask, kv_len=kv_len)
    return reference_attention(q, k, v, scale=scale, mask=mask, kv_len=kv_len)
