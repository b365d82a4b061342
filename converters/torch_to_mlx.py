"""A transformers Whisper checkpoint (stock, or compressed by mlx-bald with its spec in
config.json) -> an MLX model folder. Torch is not needed: tensors are read with
safetensors' numpy API. The folder is built in a temporary directory, checked tensor by
tensor against what (dims, spec) imply, and renamed into place only if it is right."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from converters.whisper_folders import to_mlx_layout
from converters.whisper_names import hf_to_mlx
from mlx_bald.errors import ModelFormatError
from mlx_bald.fsutil import atomic_dir
from mlx_bald.spec import MLX_CONFIG_KEY, TORCH_CONFIG_KEY, CompressionSpec, SpecError

_TIED_OR_COMPUTED = ("proj_out.weight", "model.encoder.embed_positions.weight")


def dims_from_hf_config(cfg: dict) -> dict:
    for side in ("encoder", "decoder"):  # the MLX (and openai) Whisper blocks hard-code 4*d
        if cfg.get(f"{side}_ffn_dim", 4 * cfg.get("d_model", 0)) != 4 * cfg.get("d_model", 0):
            raise ModelFormatError(f"config.json: {side}_ffn_dim {cfg.get(f'{side}_ffn_dim')} is not "
                                   f"4 x d_model ({cfg.get('d_model')}); not a Whisper layout MLX can run")
    try:
        return {"n_mels": cfg["num_mel_bins"], "n_audio_ctx": cfg["max_source_positions"],
                "n_audio_state": cfg["d_model"], "n_audio_head": cfg["encoder_attention_heads"],
                "n_audio_layer": cfg["encoder_layers"], "n_vocab": cfg["vocab_size"],
                "n_text_ctx": cfg["max_target_positions"], "n_text_state": cfg["d_model"],
                "n_text_head": cfg["decoder_attention_heads"], "n_text_layer": cfg["decoder_layers"]}
    except KeyError as e:
        raise ModelFormatError(f"config.json is not a Whisper config: {e} missing") from e


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    out = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except Exception as e:  # truncated or not safetensors at all
        raise ModelFormatError(f"{path}: cannot read tensors ({str(e)[:200]})") from e
    return out


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder positions (the MLX encoder computes them instead of storing)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


def _check_encoder_positions(tensors: dict[str, np.ndarray], dims: dict) -> None:
    name = "model.encoder.embed_positions.weight"
    if name not in tensors:
        return
    want = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"])
    got = tensors[name].astype(np.float32)
    if got.shape != want.shape or np.abs(got - want).max() > 1e-2:
        raise ModelFormatError(f"tensor {name}: not Whisper's sinusoidal positions, which the MLX "
                               f"encoder computes; this checkpoint cannot be converted faithfully")


def _alignment_heads(src: Path, dims: dict) -> list[list[int]]:
    gen = src / "generation_config.json"
    heads = json.loads(gen.read_text()).get("alignment_heads") if gen.exists() else None
    if not heads:  # Whisper's default: every head of the upper half of the decoder
        heads = [[l, h] for l in range(dims["n_text_layer"] // 2, dims["n_text_layer"])
                 for h in range(dims["n_text_head"])]
    return [[int(l), int(h)] for l, h in heads if l < dims["n_text_layer"]]


def convert_checkpoint(src: str | Path, out: str | Path, quantize_bits: int | None = None,
                       group_size: int = 64, dtype: str = "float16") -> Path:
    """Convert ``src`` (transformers folder) into an MLX folder at ``out``."""
    src, out = Path(src), Path(out)
    cfg_path, weights_path = src / "config.json", src / "model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ModelFormatError(f"{src}: not a transformers checkpoint (needs config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    dims = dims_from_hf_config(cfg)
    try:
        spec = CompressionSpec.from_dict(cfg.get(TORCH_CONFIG_KEY))
        spec.validate()
    except SpecError as e:
        raise ModelFormatError(f"{cfg_path}: {e}") from e

    tensors = _read_tensors(weights_path)
    _check_encoder_positions(tensors, dims)
    np_dtype = {"float16": np.float16, "float32": np.float32}[dtype]
    weights = {}
    for name, value in tensors.items():
        if name in _TIED_OR_COMPUTED:
            continue
        mlx_name = hf_to_mlx(name)
        weights[mlx_name] = value.astype(np_dtype) if value.dtype.kind == "f" else value
    weights = to_mlx_layout(weights)
    weights["alignment_heads"] = np.asarray(_alignment_heads(src, dims), dtype=np.int32).reshape(-1, 2)

    config = {"model_type": "whisper", **dims}
    if not spec.is_identity or spec.recipe:
        config[MLX_CONFIG_KEY] = spec.to_dict()
    from safetensors.numpy import save_file

    from mlx_bald.load import validate_folder

    with atomic_dir(out, overwrite=True) as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        validate_folder(tmp)  # names the first tensor that disagrees with (dims, spec)
        if quantize_bits:
            _quantize_in_place(tmp, spec, quantize_bits, group_size)
    return out


def _quantize_in_place(folder: Path, spec: CompressionSpec, bits: int, group_size: int) -> None:
    import mlx.core as mx

    from mlx_bald.load import load_model, save_model_folder
    from mlx_bald.models.quantize import quantize_model
    from mlx_bald.spec import Quantization

    model = load_model(folder, dtype=mx.float16)
    quantize_model(model, bits=bits, group_size=group_size)
    spec.quantization = Quantization(bits=bits, group_size=group_size)
    save_model_folder(model, model.dims, spec, folder)
