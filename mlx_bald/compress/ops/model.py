"""CompressionSpec <-> transformers Whisper: apply a spec to a stock model, build an empty
compressed architecture, save/load compressed checkpoints, count parameters.

A compressed checkpoint is a transformers folder: config.json (WhisperConfig with the
compressed layer counts + "mlx_bald_compression": spec dict), model.safetensors (HF names,
low-rank shapes, LoRA baked), generation_config.json (alignment heads remapped), and the
tokenizer / feature-extractor files when given.
"""
from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration
from transformers.initialization import no_init_weights

from mlx_bald.errors import ModelFormatError
from mlx_bald.spec import TORCH_CONFIG_KEY, CompressionSpec, FFNRank, SpecError
from mlx_bald.compress.ops.embedding import FactoredEmbedding, factorize_embedding, install_factored_embedding
from mlx_bald.compress.ops.merge import merge_decoder
from mlx_bald.compress.ops.prune import prune_encoder
from mlx_bald.compress.ops.twins import (LowRankLinear, LowRankWhisperAttention, bake_all_lora, choose_rank, collect_input_rms,
                    compress_attention, empty_lowrank_attention, lowrank_from_linear, split_rank)
from mlx_bald.compress.ops.whiten import collect_input_moments

SPEC_KEY = TORCH_CONFIG_KEY  # the key in a compressed checkpoint's config (spec.py)
_ATTN_LEAF = {"attn": "self_attn", "cross_attn": "encoder_attn"}


# ---- spec keys (mlx-whisper names) -> HF modules ------------------------------------------
def _layer(model: nn.Module, key: str) -> nn.Module:
    side, _, idx, _ = key.split(".")
    stack = model.model.encoder.layers if side == "encoder" else model.model.decoder.layers
    i = int(idx)
    if i >= len(stack):
        raise SpecError(f"{key}: the compressed {side} has {len(stack)} layers")
    return stack[i]


def attention_module(model: nn.Module, key: str) -> nn.Module:
    """``"encoder.blocks.3.attn"`` -> model.model.encoder.layers[3].self_attn, etc."""
    return getattr(_layer(model, key), _ATTN_LEAF[key.split(".")[3]])


def ffn_linears(model: nn.Module, key: str) -> tuple[nn.Module, nn.Module]:
    """``"encoder.blocks.0.mlp"`` -> (fc1, fc2) of that layer."""
    layer = _layer(model, key)
    return layer.fc1, layer.fc2


def _set_attention(model: nn.Module, key: str, module: nn.Module) -> None:
    setattr(_layer(model, key), _ATTN_LEAF[key.split(".")[3]], module)


# ---- apply / build ----------------------------------------------------------------------
def is_compressed_config(config: WhisperConfig) -> bool:
    return getattr(config, SPEC_KEY, None) is not None


def _own_config(model: nn.Module) -> None:
    """Give ``model`` private copies of its config and generation config: apply_spec edits
    them, and a WhisperConfig is often shared (teacher and student built from one object)."""
    old, new = model.config, copy.deepcopy(model.config)
    for m in model.modules():
        if getattr(m, "config", None) is old:
            m.config = new
    if getattr(model, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(model.generation_config)


@torch.no_grad()
def apply_spec(model: WhisperForConditionalGeneration, spec: CompressionSpec, *,
               calibrate: Callable[[nn.Module], Any] | None = None,
               seed: int = 0, init: str = "asvd") -> WhisperForConditionalGeneration:
    """Turn a stock (dense) Whisper into ``spec``'s architecture, in place.

    Order: decoder merge, encoder prune, embedding SVD, then product-twin attention and
    low-rank FFN on the (already renumbered) layers named by the spec keys.
    ``calibrate(model)`` runs a few forward passes; when given, ``init`` picks the data-aware
    SVD: "asvd" scales FFN inputs by their activation RMS; "whiten" whitens FFN inputs and
    both sides of each encoder self-attention product by their second moments (``whiten``).
    LoRA factors (spec lora_qk/lora_vo/lora) are attached unbaked, ready to train.
    """
    if is_compressed_config(model.config):
        raise SpecError("model is already compressed")
    spec.validate(n_audio_layer=model.config.encoder_layers, n_text_layer=model.config.decoder_layers,
                  d_model=model.config.d_model)
    _own_config(model)
    gen = torch.Generator().manual_seed(seed)
    if spec.decoder_merge:
        merge_decoder(model, spec.decoder_merge)
    if spec.encoder_pruned:
        prune_encoder(model, spec.encoder_pruned)
    if spec.embedding_rank:
        factorize_embedding(model, spec.embedding_rank)

    if init not in ("asvd", "whiten"):
        raise ValueError(f"init must be 'asvd' or 'whiten', not {init!r}")
    rms, moments = {}, {}
    if calibrate is not None and init == "asvd" and spec.ffn:
        rms = ffn_input_rms(model, list(spec.ffn), calibrate)
    elif calibrate is not None and init == "whiten":
        moments = input_moments(model, spec, calibrate)

    for key, a in spec.attention.items():
        new = compress_attention(attention_module(model, key), a.qk_rank, a.vo_rank,
                                 a.lora_qk, a.lora_vo, generator=gen, moment=moments.get(key))
        _set_attention(model, key, new)
    for key, f in spec.ffn.items():
        layer = _layer(model, key)
        for name, rank in (("fc1", f.fc1_rank), ("fc2", f.fc2_rank)):
            if rank is not None:
                setattr(layer, name, lowrank_from_linear(getattr(layer, name), rank, f.lora,
                                                         rms.get(f"{key}.{name}"), gen,
                                                         moment=moments.get(f"{key}.{name}")))
    setattr(model.config, SPEC_KEY, spec.to_dict())
    return model


@torch.no_grad()
def input_moments(model: nn.Module, spec: CompressionSpec,
                  calibrate: Callable[[nn.Module], Any]) -> dict[str, torch.Tensor]:
    """Second moments (``collect_input_moments``) of the inputs of ``spec``'s encoder
    self-attentions and FFN linears while ``calibrate(model)`` runs, by spec key
    ("encoder.blocks.0.attn", "encoder.blocks.0.mlp.fc1", ...). Decoder and cross-attention
    modules are left out: their two inputs differ, or calibration does not reach them."""
    mods = {k: attention_module(model, k) for k in spec.attention if k.startswith("encoder.") and k.endswith(".attn")}
    return _calibrated(model, mods | _ffn_modules(model, list(spec.ffn)), calibrate, collect_input_moments)


@torch.no_grad()
def ffn_input_rms(model: nn.Module, keys: list[str], calibrate: Callable[[nn.Module], Any]) -> dict[str, torch.Tensor]:
    """Input-activation RMS of fc1/fc2 of the FFNs ``keys`` while ``calibrate(model)`` runs:
    {"encoder.blocks.0.mlp.fc1": [d], "encoder.blocks.0.mlp.fc2": [4d], ...}."""
    return _calibrated(model, _ffn_modules(model, keys), calibrate, collect_input_rms)


def _ffn_modules(model: nn.Module, keys: list[str]) -> dict[str, nn.Module]:
    mods = {}
    for key in keys:
        mods[f"{key}.fc1"], mods[f"{key}.fc2"] = ffn_linears(model, key)
    return mods


def _calibrated(model: nn.Module, mods: dict[str, nn.Module], calibrate: Callable[[nn.Module], Any],
                collect: Callable) -> dict[str, torch.Tensor]:
    """``collect(mods, run)`` while ``calibrate(model)`` runs in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return collect(mods, lambda: calibrate(model))
    finally:
        model.train(was_training)


@torch.no_grad()
def choose_ffn_ranks(model: nn.Module, keys: list[str], energy: float = 0.9,
                     act_rms: dict[str, torch.Tensor] | None = None,
                     lora_ratio: tuple[int, int] | None = (9, 1)) -> dict[str, FFNRank]:
    """Spec entries for the FFNs ``keys`` by the energy rule of ``choose_rank`` (activation-aware
    when ``act_rms`` from ``ffn_input_rms`` is given; multiples of 16; dense when no saving).
    FFNs where both matrices stay dense are left out. LoRA takes ``lora_ratio`` of the
    smaller rank (the paper's 9:1)."""
    out = {}
    for key in keys:
        fc1, fc2 = ffn_linears(model, key)
        r1 = choose_rank(fc1.weight, energy, (act_rms or {}).get(f"{key}.fc1"))
        r2 = choose_rank(fc2.weight, energy, (act_rms or {}).get(f"{key}.fc2"))
        if r1 is None and r2 is None:
            continue
        lora = split_rank(min(r for r in (r1, r2) if r is not None), lora_ratio)[1] if lora_ratio else 0
        out[key] = FFNRank(r1, r2, lora)
    return out


def _compressed_counts(config: WhisperConfig, spec: CompressionSpec) -> tuple[int, int]:
    """(encoder layers, decoder layers) of the compressed model, from an original or a
    compressed config."""
    if is_compressed_config(config):
        return config.encoder_layers, config.decoder_layers
    return spec.n_encoder_layers(config.encoder_layers), spec.n_decoder_layers(config.decoder_layers)


def build_from_spec(config: WhisperConfig, spec: CompressionSpec) -> WhisperForConditionalGeneration:
    """An uninitialised model with ``spec``'s compressed architecture, to load a saved
    compressed state dict into. ``config`` may be the original WhisperConfig or a compressed
    one (which carries the spec key and already-reduced layer counts). LoRA is baked in
    saved checkpoints, so the modules are built without separate LoRA factors."""
    n_enc, n_dec = _compressed_counts(config, spec)
    cfg = copy.deepcopy(config)
    cfg.encoder_layers, cfg.decoder_layers = n_enc, n_dec
    setattr(cfg, SPEC_KEY, spec.to_dict())
    with no_init_weights():
        model = WhisperForConditionalGeneration(cfg)
    if spec.embedding_rank:
        emb = FactoredEmbedding(cfg.vocab_size, spec.embedding_rank, cfg.d_model, cfg.pad_token_id)
        install_factored_embedding(model, emb)
    elif cfg.tie_word_embeddings:
        model.tie_weights()
    if spec.short_context_registers:
        from mlx_bald.compress.ops.short_context import install_registers

        install_registers(model.model.encoder, torch.zeros(n_enc, spec.short_context_registers, cfg.d_model))
    for key, a in spec.attention.items():
        _set_attention(model, key, empty_lowrank_attention(attention_module(model, key), a.qk_rank, a.vo_rank))
    for key, f in spec.ffn.items():
        layer = _layer(model, key)
        for name, rank in (("fc1", f.fc1_rank), ("fc2", f.fc2_rank)):
            if rank is not None:
                old = getattr(layer, name)
                setattr(layer, name, LowRankLinear(old.in_features, old.out_features, rank))
    return model


def check_matches_spec(model: nn.Module, spec: CompressionSpec) -> None:
    """Raise ModelFormatError when the model's modules disagree with ``spec``."""
    from mlx_bald.compress.ops.short_context import registers_of

    registers = registers_of(model.model.encoder)
    want = (len(model.model.encoder.layers), spec.short_context_registers, model.config.d_model)
    if (registers is None) != (not spec.short_context_registers) or (
            registers is not None and tuple(registers.shape) != want):
        raise ModelFormatError(f"short-context registers {None if registers is None else tuple(registers.shape)} "
                               f"disagree with the spec ({spec.short_context_registers} per layer)")
    if spec.decoder_merge and len(model.model.decoder.layers) != len(spec.decoder_merge):
        raise ModelFormatError(f"decoder has {len(model.model.decoder.layers)} layers, spec merges into "
                               f"{len(spec.decoder_merge)}")
    for side, stack in (("encoder", model.model.encoder.layers), ("decoder", model.model.decoder.layers)):
        for i, layer in enumerate(stack):
            leaves = ("attn", "cross_attn") if side == "decoder" else ("attn",)
            for leaf in leaves:
                key, attn = f"{side}.blocks.{i}.{leaf}", getattr(layer, _ATTN_LEAF[leaf])
                want = spec.attention.get(key)
                low = isinstance(attn, LowRankWhisperAttention)
                if (want is None) == low or (low and (attn.qk_dim, attn.vo_dim) != (want.qk_rank, want.vo_rank)):
                    raise ModelFormatError(f"{key} does not match the spec ({want})")
            f = spec.ffn.get(f"{side}.blocks.{i}.mlp")
            for name, rank in (("fc1", f.fc1_rank if f else None), ("fc2", f.fc2_rank if f else None)):
                lin = getattr(layer, name)
                if (rank is None) == isinstance(lin, LowRankLinear) or (rank is not None and lin.rank != rank):
                    raise ModelFormatError(f"{side}.blocks.{i}.mlp.{name} does not match the spec (rank {rank})")
    emb = model.model.decoder.embed_tokens
    r = emb.rank if isinstance(emb, FactoredEmbedding) else None
    if r != spec.embedding_rank:
        raise ModelFormatError(f"embedding rank {r} != spec {spec.embedding_rank}")


# ---- save / load --------------------------------------------------------------------------
def _has_lora(model: nn.Module) -> bool:
    return any((isinstance(m, LowRankWhisperAttention) and (m.q_lora is not None or m.v_lora is not None))
               or (isinstance(m, LowRankLinear) and m.lora_down is not None) for m in model.modules())


def record_spec(model: nn.Module, spec: CompressionSpec) -> None:
    """Make ``spec`` the model's own (its config's spec key), after checking that the modules
    match it: how a recipe states a change it made outside ``apply_spec`` (a factored
    embedding on a merged student, two compressed halves joined)."""
    check_matches_spec(model, spec)
    setattr(model.config, SPEC_KEY, spec.to_dict())


def save_compressed(model: WhisperForConditionalGeneration, spec: CompressionSpec, out_dir: str | os.PathLike,
                    tokenizer: Any = None, feature_extractor: Any = None, processor: Any = None) -> Path:
    """Write a compressed transformers folder atomically (temp dir, then rename). LoRA factors
    are baked into a copy; ``model`` itself is left as it is."""
    check_matches_spec(model, spec)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        m = bake_all_lora(copy.deepcopy(model)) if _has_lora(model) else model
        state = m.state_dict()
        pw = state.get("proj_out.weight")
        if pw is not None and pw.data_ptr() == state["model.decoder.embed_tokens.weight"].data_ptr():
            del state["proj_out.weight"]  # tied: stored once, as transformers does
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = copy.deepcopy(model.config)
        setattr(cfg, SPEC_KEY, spec.to_dict())
        cfg.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            gen = copy.deepcopy(model.generation_config)
            gen._from_model_config = False  # else from_pretrained drops extra keys (alignment_heads)
            gen.save_pretrained(tmp)
        for extra in (tokenizer, feature_extractor, processor):
            if extra is not None:
                extra.save_pretrained(tmp)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_compressed(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[WhisperForConditionalGeneration, CompressionSpec]:
    """Load a folder written by ``save_compressed`` -> (model in eval mode, spec)."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelFormatError(f"{path}: not a compressed checkpoint (config.json / model.safetensors missing)")
    config = WhisperConfig.from_pretrained(path)
    if not is_compressed_config(config):
        raise ModelFormatError(f"{path}/config.json has no {SPEC_KEY!r} key")
    spec = CompressionSpec.from_dict(getattr(config, SPEC_KEY))
    model = build_from_spec(config, spec)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied_ok = {"proj_out.weight"} if not spec.embedding_rank else set()
    if set(missing) - tied_ok or unexpected:
        raise ModelFormatError(f"{path}: state dict disagrees with its spec: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval(), spec


# ---- parameter counting -----------------------------------------------------------------------
def count_parameters(model: nn.Module) -> int:
    """Every parameter once (the tied output head is the embedding: counted once)."""
    return sum(p.numel() for p in model.parameters())


def expected_parameters(config: WhisperConfig, spec: CompressionSpec) -> int:
    """Closed-form parameter count of ``spec`` applied to ``config`` (original or compressed)."""
    d, v = config.d_model, config.vocab_size
    n_enc, n_dec = _compressed_counts(config, spec)

    def attn(key: str, heads: int) -> int:
        a = spec.attention.get(key)
        if a is None:
            return 4 * d * d + 3 * d  # q, k, v, out weights; q, v, out biases
        return heads * a.qk_rank * (2 * d + 1) + heads * a.vo_rank * 2 * d + d

    def ffn(key: str, f_dim: int) -> int:
        f = spec.ffn.get(key)
        r1, r2 = (f.fc1_rank, f.fc2_rank) if f else (None, None)
        fc1 = d * f_dim + f_dim if r1 is None else r1 * (d + f_dim) + f_dim
        fc2 = f_dim * d + d if r2 is None else r2 * (f_dim + d) + d
        return fc1 + fc2

    ln = 2 * d
    total = config.num_mel_bins * d * 3 + d + d * d * 3 + d + config.max_source_positions * d + ln
    for i in range(n_enc):
        k = f"encoder.blocks.{i}"
        total += attn(f"{k}.attn", config.encoder_attention_heads) + 2 * ln + ffn(f"{k}.mlp", config.encoder_ffn_dim)
    r = spec.embedding_rank
    total += (v * d if not r else r * (v + d)) + config.max_target_positions * d + ln
    if not r and not config.tie_word_embeddings:
        total += v * d  # an untied output head
    for i in range(n_dec):
        k = f"decoder.blocks.{i}"
        total += (attn(f"{k}.attn", config.decoder_attention_heads) + attn(f"{k}.cross_attn", config.decoder_attention_heads)
                  + 3 * ln + ffn(f"{k}.mlp", config.decoder_ffn_dim))
    return total
