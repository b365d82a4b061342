"""Building blocks of a (compressed) Whisper in MLX, with mlx-whisper's parameter names.

- ``Attention``: dense, or product-twin low-rank with per-head q/k dim ``qk_rank`` and v/o
  dim ``vo_rank`` (the 1/sqrt(d_head) scale folded into the query, so scale 1.0; the value
  bias folded into the out bias, so the value has none).
- ``LowRankLinear``: ``up(down(x))`` for a low-rank FFN matrix (``mlpN.down``, ``mlpN.up``).
- ``FactoredEmbedding``: tied embedding ``A @ B`` kept factored (``weight_a``, ``weight_b``).
- ``ShortlistHead``: the tied logits previewed at low rank, rescored exactly where they matter.
- ``ResidualAttentionBlock``: pre-LN block; the decoder variant has cross-attention.
Attention itself runs through ``mlx_bald.kernels.factored_attention``.
"""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..kernels import attention_scores, factored_attention
from ..spec import AttentionRank, FFNRank


class Attention(nn.Module):
    def __init__(self, n_state: int, n_head: int, rank: AttentionRank | None = None):
        super().__init__()
        self.n_head = n_head
        d_head = n_state // n_head
        self.low_rank = rank is not None
        self.qk_dim = rank.qk_rank if rank else d_head
        self.vo_dim = rank.vo_rank if rank else d_head
        self.scale = 1.0 if rank else d_head ** -0.5
        self.query = nn.Linear(n_state, n_head * self.qk_dim)
        self.key = nn.Linear(n_state, n_head * self.qk_dim, bias=False)
        self.value = nn.Linear(n_state, n_head * self.vo_dim, bias=not self.low_rank)
        self.out = nn.Linear(n_head * self.vo_dim, n_state)

    def _heads(self, x: mx.array, dim: int) -> mx.array:
        """[B, T, H*dim] -> [B, H, T, dim] (a view; the kernels read strides)."""
        return x.reshape(*x.shape[:2], self.n_head, dim).transpose(0, 2, 1, 3)

    def project_q(self, x: mx.array) -> mx.array:
        return self._heads(self.query(x), self.qk_dim)

    def project_kv(self, y: mx.array) -> tuple[mx.array, mx.array]:
        """Keys and values, contiguous per head: [B, H, S, qk_dim], [B, H, S, vo_dim]."""
        k = mx.contiguous(self._heads(self.key(y), self.qk_dim))
        v = mx.contiguous(self._heads(self.value(y), self.vo_dim))
        return k, v

    def project_out(self, o: mx.array) -> mx.array:
        """[B, H, T, vo_dim] -> [B, T, d]."""
        b, _, t, _ = o.shape
        return self.out(o.transpose(0, 2, 1, 3).reshape(b, t, self.n_head * self.vo_dim))

    def attend(self, q: mx.array, k: mx.array, v: mx.array, *, mask: mx.array | None = None,
               kv_len: int | mx.array | None = None, with_qk: bool = False
               ) -> tuple[mx.array, mx.array | None]:
        """Output [B, T, d] and, if asked, the pre-softmax scores (mlx-whisper's ``qk``)."""
        o = factored_attention(q, k, v, scale=self.scale, mask=mask, kv_len=kv_len)
        qk = attention_scores(q, k, scale=self.scale, mask=mask, kv_len=kv_len) if with_qk else None
        return self.project_out(o), qk

    def __call__(self, x: mx.array, xa: mx.array | None = None, mask: mx.array | None = None,
                 with_qk: bool = False) -> tuple[mx.array, mx.array | None]:
        """Full-sequence attention (no cache): self-attention, or cross-attention to ``xa``."""
        k, v = self.project_kv(x if xa is None else xa)
        return self.attend(self.project_q(x), k, v, mask=mask, with_qk=with_qk)


class LowRankLinear(nn.Module):
    def __init__(self, in_dims: int, out_dims: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_dims, rank, bias=False)
        self.up = nn.Linear(rank, out_dims)

    def __call__(self, x: mx.array) -> mx.array:
        return self.up(self.down(x))


def ffn_linear(in_dims: int, out_dims: int, rank: int | None) -> nn.Module:
    return nn.Linear(in_dims, out_dims) if rank is None else LowRankLinear(in_dims, out_dims, rank)


class FactoredEmbedding(nn.Module):
    """Token embedding ``weight_a @ weight_b`` ([V, r] @ [r, d]), tied to the logits."""

    def __init__(self, n_vocab: int, dims: int, rank: int):
        super().__init__()
        self.weight_a = mx.random.normal((n_vocab, rank), scale=1 / math.sqrt(rank))
        self.weight_b = mx.random.normal((rank, dims), scale=1 / math.sqrt(dims))

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.weight_a[tokens] @ self.weight_b

    def as_linear(self, h: mx.array) -> mx.array:
        # (h B^T) A^T: the vocabulary-wide product runs at rank r, not d
        return (h @ self.weight_b.T) @ self.weight_a.T


class ShortlistHead(nn.Module):
    """Logits of the tied embedding E (text rows first, then ``n_vocab - n_text`` specials
    and timestamps), after SVD-softmax: text logits previewed as ``up(down(h))`` (E's rank-R
    SVD), the ``top`` best previews and every special/timestamp token computed exactly with
    E's rows; other text tokens keep their preview. Full-length output, so logit filters,
    timestamp rules and fallback downstream see what they always see."""

    def __init__(self, n_state: int, n_text: int, rank: int, top: int):
        super().__init__()
        self.preview_down = nn.Linear(n_state, rank, bias=False)  # V_R^T
        self.preview_up = nn.Linear(rank, n_text, bias=False)     # U_R S_R of the text rows
        self.n_text, self.top = n_text, min(top, n_text)

    def __call__(self, h: mx.array, embedding: mx.array) -> mx.array:
        """h [..., d], embedding [V, d] -> logits [..., V]."""
        preview = self.preview_up(self.preview_down(h))
        top = mx.argpartition(-preview, self.top - 1, axis=-1)[..., : self.top]
        exact = (embedding[top] @ h[..., None])[..., 0]  # the shortlist's full rows, [..., top]
        text = mx.put_along_axis(preview, top, exact.astype(preview.dtype), axis=-1)
        special = h @ embedding[self.n_text:].T
        return mx.concatenate([text, special], axis=-1)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False,
                 attn_rank: AttentionRank | None = None,
                 cross_rank: AttentionRank | None = None, ffn_rank: FFNRank | None = None):
        super().__init__()
        self.attn = Attention(n_state, n_head, attn_rank)
        self.attn_ln = nn.LayerNorm(n_state)
        if cross_attention:
            self.cross_attn = Attention(n_state, n_head, cross_rank)
            self.cross_attn_ln = nn.LayerNorm(n_state)
        n_mlp = 4 * n_state
        self.mlp1 = ffn_linear(n_state, n_mlp, ffn_rank.fc1_rank if ffn_rank else None)
        self.mlp2 = ffn_linear(n_mlp, n_state, ffn_rank.fc2_rank if ffn_rank else None)
        self.mlp_ln = nn.LayerNorm(n_state)

    def mlp(self, x: mx.array) -> mx.array:
        return self.mlp2(nn.gelu(self.mlp1(self.mlp_ln(x))))

    def __call__(self, x: mx.array) -> mx.array:
        """Encoder block (no cross-attention, no mask)."""
        x = x + self.attn(self.attn_ln(x))[0]
        return x + self.mlp(x)
