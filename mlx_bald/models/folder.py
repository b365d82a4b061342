"""The MLX model folder: what tensors (dims, spec) imply, reading a safetensors header
without MLX, and writing a folder from a model (atomically).

Folder = config.json (ModelDimensions of the model as stored, ``"model_type": "whisper"``,
for compressed models ``"compression"``: CompressionSpec dict and, when quantized,
``"quantization"``: {"group_size", "bits"}) + weights.safetensors (mlx-whisper names).
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, replace
from pathlib import Path

from mlx_whisper.whisper import ModelDimensions

from ..errors import ModelFormatError
from ..fsutil import atomic_dir
from ..vocab import first_special
from ..spec import MLX_CONFIG_KEY, QUANT_BITS, CompressionSpec, Quantization

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIONAL_TENSORS = ("alignment_heads",)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F32", "F16", "BF16")


# ---- what the model should hold -------------------------------------------------------
def linear_modules(dims: ModelDimensions, spec: CompressionSpec) -> dict[str, tuple[int, int, bool]]:
    """Every Linear (and the dense token embedding) as path -> (out, in, has_bias)."""
    mods: dict[str, tuple[int, int, bool]] = {}
    for side, n_layer, d, n_head in (("encoder", dims.n_audio_layer, dims.n_audio_state, dims.n_audio_head),
                                     ("decoder", dims.n_text_layer, dims.n_text_state, dims.n_text_head)):
        for i in range(n_layer):
            p = f"{side}.blocks.{i}"
            for att in ("attn", "cross_attn") if side == "decoder" else ("attn",):
                rank = spec.attention.get(f"{p}.{att}")
                qk = n_head * (rank.qk_rank if rank else d // n_head)
                vo = n_head * (rank.vo_rank if rank else d // n_head)
                mods[f"{p}.{att}.query"] = (qk, d, True)
                mods[f"{p}.{att}.key"] = (qk, d, False)
                mods[f"{p}.{att}.value"] = (vo, d, rank is None)
                mods[f"{p}.{att}.out"] = (d, vo, True)
            ffn = spec.ffn.get(f"{p}.mlp")
            for name, n_in, n_out, r in (("mlp1", d, 4 * d, ffn.fc1_rank if ffn else None),
                                         ("mlp2", 4 * d, d, ffn.fc2_rank if ffn else None)):
                if r is None:
                    mods[f"{p}.{name}"] = (n_out, n_in, True)
                else:
                    mods[f"{p}.{name}.down"] = (r, n_in, False)
                    mods[f"{p}.{name}.up"] = (n_out, r, True)
    if not spec.embedding_rank:
        mods["decoder.token_embedding"] = (dims.n_vocab, dims.n_text_state, False)
    return mods


def expected_shapes(dims: ModelDimensions, spec: CompressionSpec,
                    quantized: set[str] = frozenset(), bits: int = 0,
                    group_size: int = 0) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for a folder of (dims, spec); ``quantized`` = module paths
    stored quantized (weight packed to uint32, plus scales and biases)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path, (n_out, n_in, has_bias) in linear_modules(dims, spec).items():
        if path in quantized:
            shapes[f"{path}.weight"] = (n_out, n_in * bits // 32)
            shapes[f"{path}.scales"] = (n_out, n_in // group_size)
            shapes[f"{path}.biases"] = (n_out, n_in // group_size)
        else:
            shapes[f"{path}.weight"] = (n_out, n_in)
        if has_bias:
            shapes[f"{path}.bias"] = (n_out,)
    da, dt = dims.n_audio_state, dims.n_text_state
    shapes.update({"encoder.conv1.weight": (da, 3, dims.n_mels), "encoder.conv1.bias": (da,),
                   "encoder.conv2.weight": (da, 3, da), "encoder.conv2.bias": (da,),
                   "encoder.ln_post.weight": (da,), "encoder.ln_post.bias": (da,),
                   "decoder.positional_embedding": (dims.n_text_ctx, dt),
                   "decoder.ln.weight": (dt,), "decoder.ln.bias": (dt,)})
    for side, n_layer, d in (("encoder", dims.n_audio_layer, da), ("decoder", dims.n_text_layer, dt)):
        lns = ("attn_ln", "mlp_ln") + (("cross_attn_ln",) if side == "decoder" else ())
        for i in range(n_layer):
            for ln in lns:
                shapes[f"{side}.blocks.{i}.{ln}.weight"] = (d,)
                shapes[f"{side}.blocks.{i}.{ln}.bias"] = (d,)
    if spec.embedding_rank:
        shapes["decoder.token_embedding.weight_a"] = (dims.n_vocab, spec.embedding_rank)
        shapes["decoder.token_embedding.weight_b"] = (spec.embedding_rank, dt)
    if spec.short_context_registers:
        shapes["encoder.short_registers"] = (dims.n_audio_layer, spec.short_context_registers, da)
    if spec.head is not None:
        shapes["decoder.head.preview_down.weight"] = (spec.head.rank, dt)
        shapes["decoder.head.preview_up.weight"] = (first_special(dims.n_vocab), spec.head.rank)
    return shapes


# ---- reading ----------------------------------------------------------------------------
def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape), after checking the file is complete; ModelFormatError if not."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelFormatError(f"{path}: truncated (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{path}: unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the safetensors header is not a JSON object")
    data_len = size - 8 - n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            numel = 1
            for s in shape:
                numel *= int(s)
            nbytes = numel * _ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"{path}: tensor {name!r} has a malformed entry ({info})") from e
        if end - start != nbytes or start < 0:
            raise ModelFormatError(f"{path}: tensor {name!r} {dtype}{list(shape)} needs {nbytes} "
                                   f"bytes, its offsets span {end - start}")
        if end > data_len:
            raise ModelFormatError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the "
                                   f"data, which has only {data_len}")
        tensors[name] = (dtype, shape)
    return tensors


def read_config(folder: Path) -> tuple[ModelDimensions, CompressionSpec, dict | None]:
    """(dims, spec, quantization) from ``folder/config.json``; ModelFormatError if bad."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ModelFormatError(f"{folder}: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    if config.get("model_type", "whisper") != "whisper":
        raise ModelFormatError(f"{path}: model_type is {config['model_type']!r}, not 'whisper'")
    fields = list(ModelDimensions.__dataclass_fields__)
    missing = [k for k in fields if k not in config]
    bad = [k for k in fields if k in config and (type(config[k]) is not int or config[k] <= 0)]
    if missing or bad:
        raise ModelFormatError(f"{path}: missing dims {missing}, non-positive-integer dims {bad}")
    dims = ModelDimensions(**{k: config[k] for k in fields})
    for d, h, side in ((dims.n_audio_state, dims.n_audio_head, "audio"),
                       (dims.n_text_state, dims.n_text_head, "text")):
        if d % h:
            raise ModelFormatError(f"{path}: n_{side}_state {d} is not a multiple of n_{side}_head {h}")
    try:
        spec = CompressionSpec.from_dict(config.get(MLX_CONFIG_KEY))
        spec.validate()
    except (ValueError, TypeError) as e:  # SpecError is a ValueError
        raise ModelFormatError(f"{path}: bad compression spec: {e}") from e
    _check_spec_fits(path, dims, spec)
    quant = config.get("quantization")
    if spec.quantization is not None:
        from_spec = {"group_size": spec.quantization.group_size, "bits": spec.quantization.bits}
        if quant is not None and quant != from_spec:
            raise ModelFormatError(f"{path}: quantization {quant} disagrees with the compression "
                                   f"spec's {from_spec}")
        quant = from_spec
    if quant is not None:
        if (not isinstance(quant, dict) or quant.get("bits") not in QUANT_BITS
                or type(quant.get("group_size")) is not int or quant["group_size"] <= 0):
            raise ModelFormatError(f"{path}: bad quantization {quant!r}")
        quant = {"group_size": quant["group_size"], "bits": quant["bits"]}
        spec.quantization = Quantization(**quant)
    return dims, spec, quant


def _check_spec_fits(path: Path, dims: ModelDimensions, spec: CompressionSpec) -> None:
    if spec.decoder_merge and len(spec.decoder_merge) != dims.n_text_layer:
        raise ModelFormatError(f"{path}: {len(spec.decoder_merge)} merge groups but "
                               f"n_text_layer = {dims.n_text_layer}")
    for key in [*spec.attention, *spec.ffn]:
        side, _, idx, _ = key.split(".")
        n = dims.n_audio_layer if side == "encoder" else dims.n_text_layer
        if int(idx) >= n:
            raise ModelFormatError(f"{path}: compression entry {key!r} but the {side} has {n} blocks")


# ---- writing ----------------------------------------------------------------------------
def save_model_folder(model, dims: ModelDimensions, spec: CompressionSpec | None,
                      out_dir: str | Path) -> Path:
    """Write config.json + weights.safetensors for ``model``; written to a temporary folder
    beside ``out_dir`` and renamed into place at the end (an existing folder is replaced)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    spec = spec or CompressionSpec()
    out_dir = Path(out_dir)
    weights = dict(tree_flatten(model.parameters()))
    if "alignment_heads" in weights:
        weights["alignment_heads"] = weights["alignment_heads"].astype(mx.int32)
    quantized = any(k.endswith(".scales") for k in weights)
    if quantized != (spec.quantization is not None):
        raise ValueError("the spec's quantization does not match the model "
                         f"(spec: {spec.quantization}, model quantized: {quantized})")
    config = {**asdict(dims), "model_type": "whisper"}
    if not replace(spec, quantization=None).is_identity or spec.recipe or spec.notes:
        # quantization alone stays mlx-whisper-loadable: its top-level key is enough
        config[MLX_CONFIG_KEY] = spec.to_dict()
    if spec.quantization is not None:
        config["quantization"] = {"group_size": spec.quantization.group_size,
                                  "bits": spec.quantization.bits}
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        mx.save_safetensors(str(tmp / WEIGHTS_FILE), weights, metadata={"format": "mlx"})
    return out_dir
