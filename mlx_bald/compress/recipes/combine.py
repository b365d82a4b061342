"""Joining recipes: the decoder side of one compressed checkpoint (BaldWhisper: merged decoder
layers, factored embedding) with the encoder side of another (pruning, AdaPTwin).

Order used by ``mlx-bald compress --recipe bald+prune+adaptwin`` (any subset):
1. bald on the base: trains only the decoder (and embedding), on the base encoder's outputs;
2. prune, then adaptwin, on the base encoder: every retrained layer learns to reproduce the
   base encoder's own hidden states;
3. join: encoder from 2, decoder + embedding + alignment heads from 1; one spec lists both.
Each side was trained against the base's other side, which is why the join needs no
further training: the decoder expects base encoder outputs, and the encoder imitates them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mlx_bald.compress.ops.model import load_compressed, record_spec, save_compressed
from mlx_bald.spec import CompressionSpec

CANONICAL_ORDER = ("bald", "prune", "adaptwin")


def _encoder_keys(spec: CompressionSpec) -> list[str]:
    return [k for k in (*spec.attention, *spec.ffn) if k.startswith("encoder.")]


def _decoder_keys(spec: CompressionSpec) -> list[str]:
    return [k for k in (*spec.attention, *spec.ffn) if k.startswith("decoder.")]


@torch.no_grad()
def same_encoder(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.model.encoder.state_dict(), b.model.encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def combine(decoder_ckpt: str | os.PathLike, encoder_ckpt: str | os.PathLike, out: str | os.PathLike,
            base: nn.Module | None = None) -> Path:
    """Write a checkpoint with ``encoder_ckpt``'s encoder and ``decoder_ckpt``'s decoder.
    With ``base``, check that the decoder side's encoder is still the base encoder (the
    encoder side was trained to imitate that one)."""
    dec, dspec = load_compressed(decoder_ckpt)
    enc, espec = load_compressed(encoder_ckpt)
    if dspec.encoder_pruned or _encoder_keys(dspec):
        raise ValueError(f"{decoder_ckpt}: its encoder is compressed; only its decoder side can be joined")
    if espec.decoder_merge or espec.embedding_rank or _decoder_keys(espec):
        raise ValueError(f"{encoder_ckpt}: its decoder is compressed; only its encoder side can be joined")
    if base is not None and not same_encoder(dec, base):
        raise ValueError(f"{decoder_ckpt}: its encoder differs from the base encoder")
    if (dec.config.d_model, dec.config.encoder_attention_heads) != (enc.config.d_model, enc.config.encoder_attention_heads):
        raise ValueError("the two checkpoints come from different model sizes")
    spec = CompressionSpec(
        decoder_merge=dspec.decoder_merge, embedding_rank=dspec.embedding_rank,
        encoder_pruned=espec.encoder_pruned,
        attention={**dspec.attention, **espec.attention}, ffn={**dspec.ffn, **espec.ffn},
        quantization=dspec.quantization or espec.quantization,
        recipe=[r for r in CANONICAL_ORDER if r in dspec.recipe + espec.recipe],
        notes={**dspec.notes, **espec.notes,
               "combined": {"decoder_from": str(decoder_ckpt), "encoder_from": str(encoder_ckpt),
                            "order": "bald (decoder) | prune -> adaptwin (encoder), joined"}})
    dec.model.encoder = enc.model.encoder
    dec.config.encoder_layers = enc.config.encoder_layers
    record_spec(dec, spec)
    return save_compressed(dec, spec, out)
