"""CTranslate2 Whisper model.bin -> openai/mlx-whisper-named float tensors + dimensions.

This canonical form feeds both writers: the MLX folder (mlx-whisper layout) and the
transformers folder (``converters.whisper_folders``)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from converters.ct2_reader import read_ct2
from mlx_bald.errors import ModelFormatError


@dataclass
class Dims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def to_dict(self) -> dict:
        return asdict(self)


def _count_layers(names, prefix: str) -> int:
    idx = {int(m.group(1)) for n in names if (m := re.match(rf"{prefix}/layer_(\d+)/", n))}
    return max(idx) + 1 if idx else 0


def ct2_to_openai(ct2: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Dims]:
    """Rename and un-fuse CT2 variables into openai names (conv weights as [out, in, k])."""
    try:
        w: dict[str, np.ndarray] = {}
        for side in ("encoder", "decoder"):
            n_layers = _count_layers(ct2, side)
            for i in range(n_layers):
                src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
                _attention(ct2, f"{src}/self_attention", f"{dst}.attn", fused_qkv=True, out=w)
                _norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", w)
                if side == "decoder":
                    _attention(ct2, f"{src}/attention", f"{dst}.cross_attn", fused_qkv=False, out=w)
                    _norm(ct2, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", w)
                _linear(ct2, f"{src}/ffn/linear_0", f"{dst}.mlp1", w)
                _linear(ct2, f"{src}/ffn/linear_1", f"{dst}.mlp2", w)
                _norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", w)
        for conv in ("conv1", "conv2"):
            w[f"encoder.{conv}.weight"] = ct2[f"encoder/{conv}/weight"]
            w[f"encoder.{conv}.bias"] = ct2[f"encoder/{conv}/bias"]
        w["encoder.positional_embedding"] = ct2["encoder/position_encodings/encodings"]
        _norm(ct2, "encoder/layer_norm", "encoder.ln_post", w)
        w["decoder.token_embedding.weight"] = ct2["decoder/embeddings/weight"]
        w["decoder.positional_embedding"] = ct2["decoder/position_encodings/encodings"]
        _norm(ct2, "decoder/layer_norm", "decoder.ln", w)
        dims = Dims(
            n_mels=int(ct2["encoder/conv1/weight"].shape[1]),
            n_audio_ctx=int(ct2["encoder/position_encodings/encodings"].shape[0]),
            n_audio_state=int(ct2["encoder/conv1/weight"].shape[0]),
            n_audio_head=int(ct2["encoder/num_heads"]),
            n_audio_layer=_count_layers(ct2, "encoder"),
            n_vocab=int(ct2["decoder/embeddings/weight"].shape[0]),
            n_text_ctx=int(ct2["decoder/position_encodings/encodings"].shape[0]),
            n_text_state=int(ct2["decoder/embeddings/weight"].shape[1]),
            n_text_head=int(ct2["decoder/num_heads"]),
            n_text_layer=_count_layers(ct2, "decoder"),
        )
    except KeyError as e:
        raise ModelFormatError(f"not a Whisper CTranslate2 model: variable {e} missing") from e
    return w, dims


def _linear(ct2, src: str, dst: str, out: dict, bias: bool = True) -> None:
    out[f"{dst}.weight"] = ct2[f"{src}/weight"]
    if bias:
        out[f"{dst}.bias"] = ct2[f"{src}/bias"]


def _norm(ct2, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"] = ct2[f"{src}/gamma"]
    out[f"{dst}.bias"] = ct2[f"{src}/beta"]


def _attention(ct2, src: str, dst: str, fused_qkv: bool, out: dict) -> None:
    if fused_qkv:  # linear_0 = q,k,v fused on the output axis; linear_1 = output
        q, k, v = np.split(ct2[f"{src}/linear_0/weight"], 3)
        qb, _kb, vb = np.split(ct2[f"{src}/linear_0/bias"], 3)  # key bias is all zeros
        o, ob = ct2[f"{src}/linear_1/weight"], ct2[f"{src}/linear_1/bias"]
    else:  # cross-attention: linear_0 = q, linear_1 = k,v fused, linear_2 = output
        q, qb = ct2[f"{src}/linear_0/weight"], ct2[f"{src}/linear_0/bias"]
        k, v = np.split(ct2[f"{src}/linear_1/weight"], 2)
        _kb, vb = np.split(ct2[f"{src}/linear_1/bias"], 2)
        o, ob = ct2[f"{src}/linear_2/weight"], ct2[f"{src}/linear_2/bias"]
    out.update({f"{dst}.query.weight": q, f"{dst}.query.bias": qb, f"{dst}.key.weight": k,
                f"{dst}.value.weight": v, f"{dst}.value.bias": vb,
                f"{dst}.out.weight": o, f"{dst}.out.bias": ob})


def load_ct2_whisper(path) -> tuple[dict[str, np.ndarray], Dims]:
    return ct2_to_openai(read_ct2(path))
