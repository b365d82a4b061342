"""Analytic cost of a (compressed) Whisper: bytes and FLOPs per decoded token and per
encoder window, and the time floor they imply on a chosen chip.

A decode step at batch B reads every decoder weight once (shared by the batch) plus each
sequence's caches: its self-attention K/V up to the current position and the cross-attention
K/V of its audio (n_audio_ctx positions). Weights of the cross-attention key/value are NOT
read per step (their K/V are computed once per utterance). The floor of a step is
max(bytes / bandwidth, FLOPs / peak FLOP/s): on an M-series GPU decode at small batch is
bandwidth-bound, the encoder compute-bound. Real steps also pay per-kernel launch costs, so
the floor is a lower bound, and ratios of floors are what a chip "should" show at best.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from mlx_bald.spec import CompressionSpec
from mlx_bald.vocab import first_special

# unified-memory bandwidth (GB/s) and GPU fp16/fp32 peak (TFLOP/s); public figures, rounded
CHIPS: dict[str, tuple[float, float]] = {
    "M1": (68.25, 2.6),
    "M2": (100.0, 3.6),
    "M3": (100.0, 4.1),
    "M4": (120.0, 4.3),
    "M1 Pro": (200.0, 5.2),
    "M1 Max": (400.0, 10.4),
    "M2 Max": (400.0, 13.6),
}


@dataclass
class Cost:
    params: int                    # all parameters
    decoder_weight_bytes: float    # weights read per decode step
    kv_bytes_per_seq: float        # cache bytes read per step per sequence (at mean position), plus
                                   # a shortlist head's gathered embedding rows
    decoder_flops_per_token: float
    encoder_weight_bytes: float
    encoder_flops: float           # per 30 s window
    logits_flops_per_token: float  # the tied vocabulary projection alone

    def decode_floor_s(self, batch: int, bandwidth_gbs: float, tflops: float) -> float:
        """Lower bound on one decode step's time for ``batch`` sequences."""
        read = self.decoder_weight_bytes + batch * self.kv_bytes_per_seq
        return max(read / (bandwidth_gbs * 1e9), batch * self.decoder_flops_per_token / (tflops * 1e12))

    def encoder_floor_s(self, bandwidth_gbs: float, tflops: float) -> float:
        return max(self.encoder_weight_bytes / (bandwidth_gbs * 1e9), self.encoder_flops / (tflops * 1e12))

    def to_dict(self) -> dict:
        return asdict(self)


def _attn_dims(spec: CompressionSpec, key: str, d: int, n_head: int) -> tuple[int, int, int]:
    """(H*qk_dim, H*vo_dim, value-bias size) of one attention module (low rank: no value bias)."""
    r = spec.attention.get(key)
    return (n_head * r.qk_rank, n_head * r.vo_rank, 0) if r else (d, d, d)


def _ffn_params(spec: CompressionSpec, key: str, d: int) -> int:
    f = spec.ffn.get(key)
    r1 = f.fc1_rank if f else None
    r2 = f.fc2_rank if f else None
    fc1 = d * 4 * d if r1 is None else r1 * (d + 4 * d)
    fc2 = 4 * d * d if r2 is None else r2 * (4 * d + d)
    return fc1 + 4 * d + fc2 + d


def cost(dims: dict, spec: CompressionSpec | None = None, bytes_per_weight: float = 2.0,
         bytes_per_act: float = 2.0, mean_position: int = 132) -> Cost:
    """Costs of a model of ``dims`` (as stored: merged/pruned block counts) and ``spec``.

    ``mean_position``: mean self-attention length over the protocol's generation
    (4 prompt tokens + 256 generated -> about 132)."""
    spec = spec or CompressionSpec()
    d, h, v = dims["n_text_state"], dims["n_text_head"], dims["n_vocab"]
    s_audio = dims["n_audio_ctx"]
    dec_w = 0  # weights read per step
    dec_flops = 0.0
    kv = 0.0
    params = 0
    for i in range(dims["n_text_layer"]):
        qk, vo, vb = _attn_dims(spec, f"decoder.blocks.{i}.attn", d, h)
        self_w = qk * d + qk + qk * d + vo * d + vb + d * vo + d
        cqk, cvo, cvb = _attn_dims(spec, f"decoder.blocks.{i}.cross_attn", d, h)
        cross_step = cqk * d + cqk + d * cvo + d      # query + out: read every step
        cross_once = cqk * d + cvo * d + cvb          # key + value: once per utterance
        mlp = _ffn_params(spec, f"decoder.blocks.{i}.mlp", d)
        lns = 3 * 2 * d
        dec_w += self_w + cross_step + mlp + lns
        params += self_w + cross_step + cross_once + mlp + lns
        # attention FLOPs: scores and weighted sum over the keys
        dec_flops += 2 * (qk + vo) * (mean_position + s_audio)
        kv += (qk + vo) * (mean_position + s_audio)
    r = spec.embedding_rank
    emb = v * r + r * d if r else v * d
    head = emb                                        # the tied projection read per step
    rows_per_seq = 0                                  # shortlist rows: each sequence gathers its own
    if spec.head is not None:  # shortlist: rank-R preview of the text rows + N and specials exact
        n_text = first_special(v)
        preview = spec.head.rank * (n_text + d)
        rows_per_seq = min(spec.head.top, n_text) * d
        head = preview + (v - n_text) * d
        params += preview
    logits_flops = 2.0 * (head + rows_per_seq)
    dec_w += head + 2 * d                             # logits + final LayerNorm
    params += emb + dims["n_text_ctx"] * d + 2 * d
    dec_flops += 2.0 * (dec_w - head) + logits_flops  # every weight: one multiply-add per token

    da, ha, s = dims["n_audio_state"], dims["n_audio_head"], dims["n_audio_ctx"]
    enc_w = dims["n_mels"] * 3 * da + da + 3 * da * da + da + 2 * da
    enc_flops = 2.0 * (2 * s * dims["n_mels"] * 3 * da + s * 3 * da * da)  # conv1 (2s frames), conv2
    for i in range(dims["n_audio_layer"]):
        qk, vo, vb = _attn_dims(spec, f"encoder.blocks.{i}.attn", da, ha)
        attn_w = qk * da + qk + qk * da + vo * da + vb + da * vo + da
        mlp = _ffn_params(spec, f"encoder.blocks.{i}.mlp", da)
        enc_w += attn_w + mlp + 4 * da
        enc_flops += 2.0 * s * (attn_w + mlp) + 2.0 * s * s * (qk + vo)
    params += enc_w
    return Cost(params=int(params), decoder_weight_bytes=dec_w * bytes_per_weight,
                kv_bytes_per_seq=kv * bytes_per_act + rows_per_seq * bytes_per_weight,
                decoder_flops_per_token=dec_flops,
                encoder_weight_bytes=enc_w * bytes_per_weight, encoder_flops=enc_flops,
                logits_flops_per_token=logits_flops)


def floors(c: Cost, chip: str = "M1", batches: tuple[int, ...] = (1, 10)) -> dict:
    """Floors on ``chip``: ms per decode step and the tokens/s ceiling at each batch, and ms
    per encoder window."""
    bw, tf = CHIPS[chip]
    out = {"chip": chip, "bandwidth_gbs": bw, "tflops": tf,
           "encoder_floor_ms": 1e3 * c.encoder_floor_s(bw, tf)}
    for b in batches:
        step = c.decode_floor_s(b, bw, tf)
        out[f"decode_floor_ms_b{b}"] = 1e3 * step
        out[f"ceiling_tok_s_b{b}"] = b / step
    return out


# ---- speculative decoding ------------------------------------------------------------------
def speculative_speedup(per_token: float, draft_over_target: float, k: int) -> float:
    """Tokens/s over the target alone, for a draft whose next token is the target's with
    probability ``per_token`` (independently), costing ``draft_over_target`` of a target step,
    proposing ``k`` per round. A round = k draft steps + one target pass over k + 1 tokens,
    which at small batch costs one step (the weights are read once: the bandwidth floor)."""
    a = min(max(per_token, 0.0), 1.0)
    expected = k + 1 if a >= 1.0 else (1 - a ** (k + 1)) / (1 - a)  # accepted + the target's own
    return expected / (k * draft_over_target + 1.0)


def best_speedup(per_token: float, draft_over_target: float, k_max: int = 8) -> tuple[float, int]:
    """(speed-up, k) at the best fixed k <= k_max."""
    return max((speculative_speedup(per_token, draft_over_target, k), k) for k in range(1, k_max + 1))


def acceptance_needed(target_speedup: float, draft_over_target: float, k_max: int = 8) -> float | None:
    """Smallest per-token acceptance that reaches ``target_speedup`` (best k); None if even a
    perfect draft cannot (the draft costs too much)."""
    if best_speedup(1.0, draft_over_target, k_max)[0] < target_speedup:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if best_speedup(mid, draft_over_target, k_max)[0] >= target_speedup else (mid, hi)
    return hi
