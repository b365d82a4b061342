"""Closed-form least-squares patches folded into a decoder layer's last linear map.

A kept (or merged) layer that stands for a block of removed teacher layers writes
``y = r + fc2(a)`` into the residual stream (``r``: its state after the attentions, ``a``: the
FFN's hidden activation). Given the teacher's state ``t`` after the block it replaces, the patch
solves for fc2 in closed form so that ``r + fc2(a) ~ t`` on calibration tokens (ReplaceMe's idea:
one linear least-squares fit, no gradient step). The result is an ordinary fc2 weight and bias,
so the converter and the MLX runtime need nothing new.

Two shapes of patch (``PATCH_KINDS``):
- ``map``: a d x d map applied after fc2 (fc2' = W fc2), fitted on fc2's output ``f``;
- ``refit``: fc2 itself refitted on ``a`` (d x 4d), ridge-pulled towards the old fc2, so it
  needs more calibration tokens but can use all of the FFN's hidden units.
"""
from __future__ import annotations

import torch
from torch import nn

PATCH_KINDS = ("map", "refit")


def ridge_fit(x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor, ridge: float,
              row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_W sum_n w_n ||[x_n, 1] W^T - y_n||^2 + ridge * s * ||W - prior||^2 (the bias
    unpenalised; s: the mean weighted feature energy), in float64. x [n, p], y [n, q],
    prior [q, p + 1] (last column: bias), row_weight [n] -> W [q, p + 1]."""
    x64 = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    wx = x64 if row_weight is None else x64 * row_weight.double()[:, None]
    gram = wx.T @ x64
    # penalise relative to each feature's own scale, so one ridge value fits every layer
    scale = gram.diagonal()[:-1].mean().clamp_min(1e-12)
    reg = torch.full((x64.shape[1],), ridge * float(scale), dtype=torch.float64)
    reg[-1] = 0.0
    rhs = wx.T @ y.double() + reg[:, None] * prior.double().T
    return torch.linalg.solve(gram + torch.diag(reg), rhs).T


@torch.no_grad()
def fit_fc2_patch(fc2: nn.Linear, hidden: torch.Tensor, residual: torch.Tensor, target: torch.Tensor,
                  kind: str = "map", ridge: float = 1e-3, relative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """New (weight, bias) of ``fc2`` so that ``residual + fc2(hidden) ~ target`` (rows are tokens).
    ``kind`` is one of PATCH_KINDS; ``ridge`` pulls the fit towards the unpatched layer;
    ``relative`` weighs each token by 1/|target|^2, as the next LayerNorm will (a few tokens,
    the first above all, carry states many times larger than the rest)."""
    if kind not in PATCH_KINDS:
        raise ValueError(f"patch kind must be one of {PATCH_KINDS}, not {kind!r}")
    w, b = fc2.weight.double(), fc2.bias.double()
    want = target.double() - residual.double()
    weight = 1.0 / target.double().pow(2).mean(1).clamp_min(1e-12) if relative else None
    if kind == "refit":
        fit = ridge_fit(hidden, want, torch.cat([w, b[:, None]], 1), ridge, weight)
        return fit[:, :-1].to(fc2.weight.dtype), fit[:, -1].to(fc2.bias.dtype)
    f = hidden.double() @ w.T + b
    eye = torch.eye(w.shape[0], dtype=torch.float64)
    fit = ridge_fit(f, want, torch.cat([eye, torch.zeros(w.shape[0], 1, dtype=torch.float64)], 1), ridge, weight)
    m, c = fit[:, :-1], fit[:, -1]
    return (m @ w).to(fc2.weight.dtype), (m @ b + c).to(fc2.bias.dtype)


@torch.no_grad()
def fold_into(fc2: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a fitted patch into ``fc2`` in place (same shapes: the checkpoint format is unchanged)."""
    fc2.weight.copy_(weight)
    fc2.bias.copy_(bias)
