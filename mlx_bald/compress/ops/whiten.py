"""Data-whitened low-rank initialisation (the truncation-aware SVD of SVD-LLM).

A plain SVD keeps the largest singular directions of a weight W, which are not the ones
that matter for the data: the error that counts is E||(W - W_r) x||^2 = ||(W - W_r) L||_F^2
with L L^T = E[x x^T]. So the SVD is taken of W L and the truncation is mapped back by L^-1.
For an attention product twin the score x^T M y is bilinear: its error is
||L_x^T (M - M_r) L_y||_F^2, whitened on both sides. The activation-RMS scaling of ASVD is the
diagonal special case of this.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

RIDGE = 1e-2  # of the mean diagonal: padding frames make the second moment ill-conditioned


@torch.no_grad()
def collect_input_moments(modules: Mapping[str, nn.Module],
                          run: Callable[[], Any] | Iterable[Any]) -> dict[str, torch.Tensor]:
    """Mean of [x, 1] [x, 1]^T over every input vector x each module receives (its first
    positional argument, or ``hidden_states=``) while ``run`` executes: {name: [n+1, n+1]},
    float64. The last row/column holds the mean of x (and 1), for inputs with a bias term."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x = x.detach().double().reshape(-1, x.shape[-1])
            x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        if callable(run):
            run()
        else:
            for _ in run:
                pass
    finally:
        for hd in handles:
            hd.remove()
    return {n: sums[n] / counts[n] for n in sums}


def whitener(moment: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Lower-triangular L (float64) with L L^T = C + ridge * mean(diag C) * I."""
    c = moment.double()
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.cholesky(c)


def unwhiten_left(chol: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """L^-T @ left: maps a factor found for L^T A back to one for A."""
    return torch.linalg.solve_triangular(chol.T, left, upper=True)


def unwhiten_right(right: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """right @ L^-1: maps a factor found for B L back to one for B."""
    return torch.linalg.solve_triangular(chol.T, right.T, upper=True).T
