"""AdaPTwin product-twin attention, low-rank FFN linears, and their LoRA factors.

Attention: per head, (W_q^T, W_k) and (W_v^T, W_o^T) only act through their products, so
each product is replaced by its rank-r SVD (see the team brief for the exact algebra with
Whisper's biases). The 1/sqrt(d_head) scale is folded into the query, the value bias into
the output bias. LoRA factors (rank l) are extra head dims concatenated to the spectral
ones; ``bake_lora`` writes them into the plain concatenated weights (head dims r + l).

Ranks passed to the constructors here are EFFECTIVE ranks (LoRA included), matching
``CompressionSpec``: qk_rank = spectral + lora.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.whisper.modeling_whisper import WhisperAttention, eager_attention_forward

from mlx_bald.compress.ops.whiten import collect_input_moments, unwhiten_left, unwhiten_right, whitener

RANK_MULTIPLE = 16


def split_rank(total: int, ratio: tuple[int, int] = (4, 1)) -> tuple[int, int]:
    """Split an effective rank into (spectral, lora) by ``ratio`` (paper: 4:1 attention,
    9:1 FFN), e.g. 40 -> (32, 8), 180 -> (162, 18)."""
    spectral_part, lora_part = ratio
    lora = (total * lora_part) // (spectral_part + lora_part)
    return total - lora, lora


def _product_factors(a: torch.Tensor, b: torch.Tensor, rank: int, left_chol: torch.Tensor | None = None,
                     right_chol: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors (L [m, rank], R [rank, n]) of M = a @ b, with a [m, k], b [k, n],
    k small: SVD of the k x k core after two thin QRs, so M is never formed. With whiteners
    (``whiten.whitener``) of the inputs on either side, the SVD is of Lx^T M Ly, mapped back."""
    a, b = a.double(), b.double()
    if left_chol is not None:
        a = left_chol.T @ a
    if right_chol is not None:
        b = b @ right_chol
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.T)
    u, s, vt = torch.linalg.svd(ra @ rb.T)
    root = s[:rank].sqrt()
    left = (qa @ u[:, :rank]) * root
    right = (root[:, None] * vt[:rank]) @ qb.T
    if left_chol is not None:
        left = unwhiten_left(left_chol, left)
    if right_chol is not None:
        right = unwhiten_right(right, right_chol)
    return left, right


class LowRankWhisperAttention(WhisperAttention):
    """WhisperAttention whose q/k heads live in ``qk_dim`` dims and v/o heads in ``vo_dim``.

    State-dict names match WhisperAttention: q_proj [H*qk, d] (+bias), k_proj [H*qk, d],
    v_proj [H*vo, d] (no bias), out_proj [d, H*vo] (+bias). Scale is 1.0 (folded into q).
    While LoRA is attached, the spectral part lives in q/k/v/out_proj and the LoRA part in
    q_lora/k_lora/v_lora/o_lora; ``bake_lora`` merges them.
    """

    def __init__(self, embed_dim: int, num_heads: int, qk_dim: int, vo_dim: int,
                 lora_qk: int = 0, lora_vo: int = 0, dropout: float = 0.0,
                 is_decoder: bool = False, is_causal: bool = False,
                 layer_idx: int | None = None, config: Any = None):
        nn.Module.__init__(self)  # skip WhisperAttention.__init__: it allocates d x d weights
        if not (0 <= lora_qk < qk_dim and 0 <= lora_vo < vo_dim):
            raise ValueError(f"LoRA ranks ({lora_qk}, {lora_vo}) must be below ({qk_dim}, {vo_dim})")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.config = config
        self.qk_dim, self.vo_dim = qk_dim, vo_dim
        self.head_dim = qk_dim
        self.scaling = 1.0
        self.is_decoder, self.is_causal, self.layer_idx = is_decoder, is_causal, layer_idx
        self.lora_qk, self.lora_vo = lora_qk, lora_vo
        h, rq, rv = num_heads, qk_dim - lora_qk, vo_dim - lora_vo
        self.q_proj = nn.Linear(embed_dim, h * rq, bias=True)
        self.k_proj = nn.Linear(embed_dim, h * rq, bias=False)
        self.v_proj = nn.Linear(embed_dim, h * rv, bias=False)
        self.out_proj = nn.Linear(h * rv, embed_dim, bias=True)
        self.q_lora = nn.Linear(embed_dim, h * lora_qk, bias=True) if lora_qk else None
        self.k_lora = nn.Linear(embed_dim, h * lora_qk, bias=False) if lora_qk else None
        self.v_lora = nn.Linear(embed_dim, h * lora_vo, bias=False) if lora_vo else None
        self.o_lora = nn.Linear(h * lora_vo, embed_dim, bias=False) if lora_vo else None

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, qk_dim={self.qk_dim}, vo_dim={self.vo_dim}, "
                f"lora=({self.lora_qk}, {self.lora_vo})")

    def init_lora(self, generator: torch.Generator | None = None) -> None:
        """One side random, the other zero: the module's output is unchanged at start."""
        d = self.embed_dim
        with torch.no_grad():
            for rand, zero in ((self.q_lora, self.k_lora), (self.v_lora, self.o_lora)):
                if rand is None:
                    continue
                bound = 1.0 / math.sqrt(d)
                rand.weight.copy_((torch.rand(rand.weight.shape, generator=generator) * 2 - 1) * bound)
                if rand.bias is not None:
                    rand.bias.zero_()
                zero.weight.zero_()

    def _heads(self, x: torch.Tensor, main: nn.Linear, lora: nn.Linear | None) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, r + l] (spectral head dims first, then LoRA dims)."""
        b = x.shape[0]
        y = main(x).view(b, -1, self.num_heads, main.out_features // self.num_heads)
        if lora is not None:
            y = torch.cat([y, lora(x).view(b, -1, self.num_heads, lora.out_features // self.num_heads)], -1)
        return y.transpose(1, 2).contiguous()

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None,
                past_key_values: Any = None, attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False, cache: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Same cache protocol as transformers' WhisperAttention.forward; only the head dims differ.
        # transformers 5.24 renamed the argument past_key_values -> cache: accept both.
        past_key_values = cache if past_key_values is None else past_key_values
        is_cross = key_value_states is not None
        input_shape = hidden_states.shape[:-1]
        query = self._heads(hidden_states, self.q_proj, self.q_lora)

        is_updated = False
        if past_key_values is not None and isinstance(past_key_values, EncoderDecoderCache):
            is_updated = past_key_values.is_updated.get(self.layer_idx)
            if is_cross:
                past_key_values.is_updated[self.layer_idx] = True
                past_key_values = past_key_values.cross_attention_cache
            else:
                past_key_values = past_key_values.self_attention_cache

        current = key_value_states if is_cross else hidden_states
        if is_cross and past_key_values and is_updated:
            key = past_key_values.layers[self.layer_idx].keys
            value = past_key_values.layers[self.layer_idx].values
        else:
            if current.shape[0] != input_shape[0]:  # mirror HF: fold a mismatched kv batch into time
                current = current.reshape(input_shape[0], -1, current.shape[-1])
            key = self._heads(current, self.k_proj, self.k_lora)
            value = self._heads(current, self.v_proj, self.v_lora)
            if past_key_values is not None:
                key, value = past_key_values.update(key, value, self.layer_idx)

        impl = self.config._attn_implementation if self.config is not None else "eager"
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.dropout, scaling=1.0,
            output_attentions=output_attentions, **kwargs)

        h = self.num_heads
        ctx = attn_output.reshape(*input_shape, h, self.vo_dim)
        rv = self.vo_dim - self.lora_vo
        out = self.out_proj(ctx[..., :rv].reshape(*input_shape, h * rv))
        if self.o_lora is not None:
            out = out + self.o_lora(ctx[..., rv:].reshape(*input_shape, h * self.lora_vo))
        return out, attn_weights

    @torch.no_grad()
    def bake_lora(self) -> None:
        """Fold LoRA factors into q/k/v/out_proj (head dims become spectral + lora)."""
        if self.q_lora is None and self.v_lora is None:
            return
        h, d = self.num_heads, self.embed_dim

        def rows(main: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:  # per-head interleave
            lead = main.shape[1:]
            return torch.cat([main.reshape(h, -1, *lead), extra.reshape(h, -1, *lead)], 1).reshape(-1, *lead)

        if self.q_lora is not None:
            self.q_proj = _linear_from(rows(self.q_proj.weight, self.q_lora.weight),
                                       rows(self.q_proj.bias, self.q_lora.bias))
            self.k_proj = _linear_from(rows(self.k_proj.weight, self.k_lora.weight), None)
        if self.v_lora is not None:
            self.v_proj = _linear_from(rows(self.v_proj.weight, self.v_lora.weight), None)
            out_cols = rows(self.out_proj.weight.T, self.o_lora.weight.T).T
            self.out_proj = _linear_from(out_cols, self.out_proj.bias)
        self.q_lora = self.k_lora = self.v_lora = self.o_lora = None
        self.lora_qk = self.lora_vo = 0
        assert self.q_proj.out_features == h * self.qk_dim and self.out_proj.out_features == d


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def empty_lowrank_attention(attn: WhisperAttention, qk_rank: int, vo_rank: int,
                            lora_qk: int = 0, lora_vo: int = 0) -> LowRankWhisperAttention:
    """A LowRankWhisperAttention with ``attn``'s settings and uninitialised low-rank weights."""
    new = LowRankWhisperAttention(attn.embed_dim, attn.num_heads, qk_rank, vo_rank, lora_qk, lora_vo,
                                  dropout=attn.dropout, is_decoder=attn.is_decoder,
                                  is_causal=attn.is_causal, layer_idx=attn.layer_idx, config=attn.config)
    ref = attn.q_proj.weight
    return new.to(device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def compress_attention(attn: WhisperAttention, qk_rank: int, vo_rank: int, lora_rank: int = 0,
                       lora_vo: int | None = None, generator: torch.Generator | None = None,
                       moment: torch.Tensor | None = None) -> LowRankWhisperAttention:
    """Product-twin compression of a dense WhisperAttention.

    ``qk_rank``/``vo_rank`` are the effective head dims; ``lora_rank`` (q/k) and ``lora_vo``
    (v/o, default = lora_rank) of them are LoRA dims, the rest come from the per-head SVD.
    At spectral rank = d_head (no LoRA) the result equals the original module exactly.
    ``moment`` (self-attention only: E[[x,1][x,1]^T] of its input, ``collect_input_moments``)
    makes each SVD data-whitened: q/k on both sides of the bilinear score, v/o on the input.
    """
    if isinstance(attn, LowRankWhisperAttention):
        raise ValueError("attention is already low-rank")
    lora_vo = lora_rank if lora_vo is None else lora_vo
    h, dh, d = attn.num_heads, attn.head_dim, attn.embed_dim
    rq, rv = qk_rank - lora_rank, vo_rank - lora_vo
    if not (0 < rq <= dh and 0 < rv <= dh):
        raise ValueError(f"spectral ranks ({rq}, {rv}) must be in 1..d_head={dh}")
    new = empty_lowrank_attention(attn, qk_rank, vo_rank, lora_rank, lora_vo)
    wq, wk, wv, wo = (m.weight.double() for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))
    bq = attn.q_proj.bias.double() if attn.q_proj.bias is not None else torch.zeros(d, dtype=torch.float64)
    bv = attn.v_proj.bias.double() if attn.v_proj.bias is not None else torch.zeros(d, dtype=torch.float64)
    bo = attn.out_proj.bias.double() if attn.out_proj.bias is not None else torch.zeros(d, dtype=torch.float64)
    s = attn.scaling
    lx = ly = None
    if moment is not None:
        lx = whitener(moment.to(wq.device))  # [x, 1], query side
        ly = whitener(moment[:d, :d].to(wq.device))  # x, key/value side
    q_w, q_b, k_w, v_w, o_w = [], [], [], [], []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        a_qk = torch.cat([wq[sl].T, bq[sl][None]], 0) * s  # (d+1, dh): [x, 1] -> scaled query
        left, right = _product_factors(a_qk, wk[sl], rq, lx, ly)
        q_w.append(left[:d].T)
        q_b.append(left[d])
        k_w.append(right)
        left, right = _product_factors(wv[sl].T, wo[:, sl].T, rv, ly)  # M_vo = Wv_h^T Wo_h^T (d x d)
        v_w.append(left.T)
        o_w.append(right.T)
    dt = attn.q_proj.weight.dtype
    new.q_proj.weight.copy_(torch.cat(q_w).to(dt))
    new.q_proj.bias.copy_(torch.cat(q_b).to(dt))
    new.k_proj.weight.copy_(torch.cat(k_w).to(dt))
    new.v_proj.weight.copy_(torch.cat(v_w).to(dt))
    new.out_proj.weight.copy_(torch.cat(o_w, 1).to(dt))
    new.out_proj.bias.copy_((bo + wo @ bv).to(dt))  # softmax rows sum to 1: value bias -> out bias
    new.init_lora(generator)
    return new


# ---- low-rank FFN ------------------------------------------------------------------------
class LowRankLinear(nn.Module):
    """y = up(down(x)) [+ lora_up(lora_down(x))]; down: [r, in] no bias, up: [out, r] + bias.
    ``rank`` is effective (LoRA included)."""

    def __init__(self, in_features: int, out_features: int, rank: int, lora: int = 0, bias: bool = True):
        super().__init__()
        if not 0 <= lora < rank:
            raise ValueError(f"lora rank {lora} must be below rank {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank - lora, bias=False)
        self.up = nn.Linear(rank - lora, out_features, bias=bias)
        self.lora_down = nn.Linear(in_features, lora, bias=False) if lora else None
        self.lora_up = nn.Linear(lora, out_features, bias=False) if lora else None

    @property
    def lora(self) -> int:
        return self.lora_down.out_features if self.lora_down is not None else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(x))
        if self.lora_down is not None:
            y = y + self.lora_up(self.lora_down(x))
        return y

    def init_lora(self, generator: torch.Generator | None = None) -> None:
        if self.lora_down is None:
            return
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.in_features)
            self.lora_down.weight.copy_((torch.rand(self.lora_down.weight.shape, generator=generator) * 2 - 1) * bound)
            self.lora_up.weight.zero_()

    @torch.no_grad()
    def bake_lora(self) -> None:
        if self.lora_down is None:
            return
        self.down = _linear_from(torch.cat([self.down.weight, self.lora_down.weight]), None)
        self.up = _linear_from(torch.cat([self.up.weight, self.lora_up.weight], 1), self.up.bias)
        self.lora_down = self.lora_up = None

    def dense_weight(self) -> torch.Tensor:
        w = self.up.weight @ self.down.weight
        if self.lora_down is not None:
            w = w + self.lora_up.weight @ self.lora_down.weight
        return w


def _scaled_svd(weight: torch.Tensor, act_rms: torch.Tensor | None):
    """SVD of W diag(s) (ASVD: input columns scaled by activation RMS) -> U, S, Vt, s."""
    w = weight.double()
    if act_rms is None:
        scale = torch.ones(w.shape[1], dtype=torch.float64, device=w.device)
    else:
        scale = act_rms.double().to(w.device).clamp_min(1e-6)
    u, s, vt = torch.linalg.svd(w * scale, full_matrices=False)
    return u, s, vt, scale


def dense_is_smaller(in_features: int, out_features: int, rank: int) -> bool:
    return rank * (in_features + out_features) >= in_features * out_features


@torch.no_grad()
def choose_rank(weight: torch.Tensor, energy: float = 0.9, act_rms: torch.Tensor | None = None,
                multiple: int = RANK_MULTIPLE) -> int | None:
    """Smallest rank keeping ``energy`` of the squared singular values of W (of W diag(act_rms)
    when input-activation RMS statistics are given, so directions the data uses count more),
    rounded up to a multiple of ``multiple``. ``None`` = keep dense (factors would not be smaller)."""
    out_f, in_f = weight.shape
    _, s, _, _ = _scaled_svd(weight, act_rms)
    cum = torch.cumsum(s**2, 0) / (s**2).sum()
    r = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1
    r = min(-(-r // multiple) * multiple, min(out_f, in_f))
    return None if dense_is_smaller(in_f, out_f, r) else r


@torch.no_grad()
def lowrank_from_linear(linear: nn.Linear, rank: int, lora: int = 0, act_rms: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        moment: torch.Tensor | None = None) -> LowRankLinear:
    """Factor a dense Linear at effective ``rank`` (``lora`` of it LoRA, zero-initialised on the
    up side). With ``act_rms`` the SVD is activation-aware: W diag(s) = U S V^T,
    down = sqrt(S) V^T diag(1/s), up = U sqrt(S). With ``moment`` (E[[x,1][x,1]^T], it wins
    over ``act_rms``) it is whitened: W L = U S V^T, down = sqrt(S) V^T L^-1."""
    out_f, in_f = linear.weight.shape
    r = rank - lora
    if not 0 < r <= min(out_f, in_f):
        raise ValueError(f"spectral rank {r} outside 1..{min(out_f, in_f)}")
    if moment is None:
        u, s, vt, scale = _scaled_svd(linear.weight, act_rms)
        down = (s[:r].sqrt()[:, None] * vt[:r]) / scale
    else:
        chol = whitener(moment[:in_f, :in_f].to(linear.weight.device))
        u, s, vt = torch.linalg.svd(linear.weight.double() @ chol, full_matrices=False)
        down = unwhiten_right(s[:r].sqrt()[:, None] * vt[:r], chol)
    root = s[:r].sqrt()
    new = LowRankLinear(in_f, out_f, rank, lora, bias=linear.bias is not None)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    dt = linear.weight.dtype
    new.down.weight.copy_(down.to(dt))
    new.up.weight.copy_((u[:, :r] * root).to(dt))
    if linear.bias is not None:
        new.up.bias.copy_(linear.bias)
    new.init_lora(generator)
    return new


def collect_input_rms(modules: Mapping[str, nn.Module], run: Callable[[], Any] | Iterable[Any]) -> dict[str, torch.Tensor]:
    """Per-input-feature RMS of what each module receives while ``run`` (a callable, or an
    iterable whose iteration drives forward passes) executes. Returns {name: [in_features]}."""
    return {n: m[:-1, :-1].diagonal().sqrt().float() for n, m in collect_input_moments(modules, run).items()}


def bake_all_lora(model: nn.Module) -> nn.Module:
    """Bake every LoRA factor in ``model`` into plain low-rank weights (in place)."""
    for m in list(model.modules()):
        if isinstance(m, (LowRankWhisperAttention, LowRankLinear)):
            m.bake_lora()
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters only (e.g. to give them their own learning rate)."""
    out = []
    for m in model.modules():
        for name in ("q_lora", "k_lora", "v_lora", "o_lora", "lora_down", "lora_up"):
            sub = getattr(m, name, None) if isinstance(m, (LowRankWhisperAttention, LowRankLinear)) else None
            if sub is not None:
                out.extend(sub.parameters())
    return out
