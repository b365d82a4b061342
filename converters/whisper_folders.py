"""Write stock Whisper weights (openai names, numpy) as model folders:
an MLX folder (mlx-whisper layout) and a transformers folder (WhisperForConditionalGeneration)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from converters.whisper_names import mlx_to_hf
from mlx_bald.fsutil import atomic_dir
from mlx_bald.vocab import is_multilingual


def to_mlx_layout(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-whisper wants conv weights as [out, kernel, in] and computes the encoder's
    sinusoidal positions itself."""
    out = {}
    for k, v in weights.items():
        if k == "encoder.positional_embedding":
            continue
        if k.startswith("encoder.conv") and k.endswith(".weight") and v.ndim == 3:
            v = v.transpose(0, 2, 1)
        out[k] = np.ascontiguousarray(v)
    return out


def write_mlx_folder(weights: dict[str, np.ndarray], dims: dict, alignment_heads: list[list[int]],
                     out: Path, extra_config: dict | None = None) -> Path:
    tensors = to_mlx_layout(weights)
    tensors["alignment_heads"] = np.asarray(alignment_heads, dtype=np.int32).reshape(-1, 2)
    config = {"model_type": "whisper", **dims, **(extra_config or {})}
    with atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return out


def hf_config(dims: dict, n_special_offset: int) -> dict:
    """transformers WhisperConfig fields; token ids depend on multilingual (offset 1) or .en (0)."""
    eot = 50256 + n_special_offset
    return {
        "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": dims["n_vocab"], "num_mel_bins": dims["n_mels"],
        "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"], "encoder_attention_heads": dims["n_audio_head"],
        "decoder_layers": dims["n_text_layer"], "decoder_attention_heads": dims["n_text_head"],
        "encoder_ffn_dim": 4 * dims["n_audio_state"], "decoder_ffn_dim": 4 * dims["n_text_state"],
        "max_source_positions": dims["n_audio_ctx"], "max_target_positions": dims["n_text_ctx"],
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "decoder_start_token_id": eot + 1,
    }


def generation_config(dims: dict, ct2_config: dict) -> dict:
    """The generation config transformers' Whisper generate() needs (languages, tasks, ids)."""
    from mlx_bald.vocab import num_languages, tokenizer_for

    multilingual = is_multilingual(dims["n_vocab"])
    n_lang = num_languages(dims["n_vocab"])
    tok = tokenizer_for(dims["n_vocab"])
    special = tok.special_tokens
    cfg = {
        "decoder_start_token_id": tok.sot, "eos_token_id": tok.eot, "pad_token_id": tok.eot,
        "bos_token_id": tok.eot,
        "no_timestamps_token_id": tok.no_timestamps, "is_multilingual": multilingual,
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", [220, tok.eot]),
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "max_initial_timestamp_index": 50, "return_timestamps": False,
    }
    if multilingual:
        cfg["lang_to_id"] = {t: i for t, i in special.items()
                             if t.startswith("<|") and len(t) <= 9 and i >= tok.sot + 1
                             and i < tok.sot + 1 + n_lang}
        cfg["task_to_id"] = {"transcribe": tok.transcribe, "translate": tok.translate}
    return cfg


def write_hf_folder(weights: dict[str, np.ndarray], dims: dict, ct2_config: dict, out: Path,
                    tokenizer_json: Path | None = None) -> Path:
    tensors = {mlx_to_hf(k): np.ascontiguousarray(v) for k, v in weights.items()}
    multilingual = is_multilingual(dims["n_vocab"])
    with atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = hf_config(dims, int(multilingual))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(dims, ct2_config), indent=2))
        (tmp / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": dims["n_mels"],
            "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400,
            "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
            "padding_value": 0.0, "return_attention_mask": False,
            "processor_class": "WhisperProcessor"}, indent=2))
        if tokenizer_json is not None:
            shutil.copy(tokenizer_json, tmp / "tokenizer.json")
    return out
