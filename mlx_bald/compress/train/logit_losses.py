"""Cross-entropy and tempered KL on [N, vocab] logits in one fused pass, in row chunks.

Written out op by op, CE + KL(T) with a learnable T runs a dozen element-wise passes over
N x 51,865 fp32 tensors (37 MB each at N = 180), forward and backward: ~0.4 s of a ~1.1 s
merge step on 2 cores, more than the decoder layers. Here each chunk of rows stays in cache,
and the backward uses the closed forms:
  dCE/ds = (softmax(s) - onehot) / N
  dKL/ds = T (q - p) / N,  with p = softmax(t / T), q = softmax(s / T), KL = T^2 mean KL(p || q)
  dKL/dT = 2 KL / T + (1/N) sum_rows (E_p[s] - E_q[s] - Cov_p(t, log p - log q))
``distill.kd_kl_loss`` is the op-by-op reference (tests compare the two).
"""
from __future__ import annotations

import torch

CHUNK_ROWS = 6  # rows per pass: 6 x 51,865 fp32 stays in cache (measured 78 ms vs 128 ms at 16, N = 180)


def _chunk_stats(s: torch.Tensor, t: torch.Tensor | None, temp: float):
    """Per row of one chunk: log q (at T), log p (at T) when t is given."""
    log_q = torch.log_softmax(s / temp, -1)
    log_p = torch.log_softmax(t / temp, -1) if t is not None else None
    return log_q, log_p


class _CeKl(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor | None, labels: torch.Tensor, temp: torch.Tensor):
        n = s.shape[0]
        T = float(temp)
        ce = s.new_zeros((), dtype=torch.float64)
        kl = s.new_zeros((), dtype=torch.float64)
        for i in range(0, n, CHUNK_ROWS):
            sc = s[i:i + CHUNK_ROWS].float()
            ce += (sc.logsumexp(-1) - sc.gather(-1, labels[i:i + CHUNK_ROWS, None])[:, 0]).sum().double()
            if t is not None:
                log_q, log_p = _chunk_stats(sc, t[i:i + CHUNK_ROWS].float(), T)
                kl += (log_p.exp() * (log_p - log_q)).sum().double()
        ctx.save_for_backward(s, t if t is not None else s.new_empty(0), labels, temp)
        ctx.has_t = t is not None
        ce, kl = (ce / max(n, 1)).float(), (kl / max(n, 1) * T * T).float()
        ctx.kl = float(kl)
        return ce, kl

    @staticmethod
    def backward(ctx, g_ce: torch.Tensor, g_kl: torch.Tensor):
        s, t, labels, temp = ctx.saved_tensors
        n, T = s.shape[0], float(temp)
        grad = torch.empty_like(s) if ctx.needs_input_grad[0] else None
        d_temp = 0.0
        for i in range(0, n, CHUNK_ROWS):
            sc = s[i:i + CHUNK_ROWS].float()
            g = torch.softmax(sc, -1)
            g.scatter_add_(-1, labels[i:i + CHUNK_ROWS, None], torch.full_like(g[:, :1], -1.0))
            g.mul_(g_ce / n)
            if ctx.has_t:
                tc = t[i:i + CHUNK_ROWS].float()
                log_q, log_p = _chunk_stats(sc, tc, T)
                p, q = log_p.exp(), log_q.exp()
                g.add_((q - p) * (T * g_kl / n))
                if ctx.needs_input_grad[3]:
                    diff = log_p - log_q
                    cov = (p * tc * diff).sum(-1) - (p * tc).sum(-1) * (p * diff).sum(-1)
                    d_temp += float(((p * sc).sum(-1) - (q * sc).sum(-1) - cov).sum())
            if grad is not None:
                grad[i:i + CHUNK_ROWS] = g.to(grad.dtype)
        g_temp = None
        if ctx.needs_input_grad[3] and ctx.has_t:
            g_temp = (g_kl * (2 * ctx.kl / T + d_temp / n)).to(temp.dtype).reshape(temp.shape)
        return grad, None, None, g_temp


def ce_and_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
              temperature: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of ``labels``, T^2 * mean KL(softmax(teacher/T) || softmax(student/T)))
    over the rows of [N, V] logits; the KL is 0 without teacher logits. Gradients flow to the
    student logits and to a tensor temperature."""
    temp = torch.as_tensor(temperature, dtype=torch.float32, device=student_logits.device)
    t = teacher_logits.detach() if teacher_logits is not None else None
    return _CeKl.apply(student_logits, t, labels, temp)
