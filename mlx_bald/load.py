"""Load an MLX model folder (config.json + weights.safetensors) into a ready ``Whisper``.

Everything is checked before MLX sees the weights: config fields, the compression spec,
the safetensors header and file length, and every tensor's name, dtype and shape against
what (dims, spec) imply. Problems raise ``ModelFormatError`` naming the file or tensor.
Loading is strict: every parameter must be in the file (``alignment_heads`` is optional).
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .errors import ModelFormatError, ModelNotFoundError
from .models.folder import (FLOAT_DTYPES, OPTIONAL_TENSORS, WEIGHTS_FILE, expected_shapes,
                            linear_modules, read_config, read_safetensors_header,
                            save_model_folder)
from .models.quantize import quantize_model
from .models.whisper import Whisper

__all__ = ["load_model", "save_model_folder", "validate_folder"]


def validate_folder(path: str | Path) -> tuple:
    """Check a folder without loading it: returns (dims, spec, quantization, quantized paths)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFoundError(f"no model folder at {folder}")
    dims, spec, quant = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFormatError(f"{folder}: no {WEIGHTS_FILE}")
    tensors = read_safetensors_header(weights_path)

    linear = linear_modules(dims, spec)
    quantized = {name[: -len(".scales")] for name in tensors if name.endswith(".scales")}
    if quantized and quant is None:
        raise ModelFormatError(f"{weights_path}: quantized tensors (e.g. {sorted(quantized)[0]}"
                               f".scales) but config.json has no quantization")
    if quant is not None:
        stray = sorted(quantized - set(linear))
        if stray:
            raise ModelFormatError(f"{weights_path}: unexpected tensor {stray[0]}.scales")
        for path in quantized:
            n_in = linear[path][1]
            if n_in % quant["group_size"] or (n_in * quant["bits"]) % 32:
                raise ModelFormatError(f"{weights_path}: {path} is stored quantized but its "
                                       f"input width {n_in} does not fit {quant}")
    q = quant or {"bits": 0, "group_size": 0}
    expected = expected_shapes(dims, spec, quantized, q["bits"], q["group_size"])

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - set(OPTIONAL_TENSORS))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFormatError(f"{weights_path}: tensor {missing[0]!r} is missing{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelFormatError(f"{weights_path}: unexpected tensor {unexpected[0]!r}{more}")
    for name, shape in expected.items():
        dtype, found = tensors[name]
        if found != shape:
            raise ModelFormatError(f"{weights_path}: tensor {name!r} has shape {list(found)}, "
                                   f"expected {list(shape)} from config.json")
        want = ("U32",) if name.endswith(".weight") and name[: -len(".weight")] in quantized \
            else FLOAT_DTYPES
        if dtype not in want:
            raise ModelFormatError(f"{weights_path}: tensor {name!r} has dtype {dtype}, "
                                   f"expected one of {want}")
    if "alignment_heads" in tensors:
        _check_alignment_heads(weights_path, tensors["alignment_heads"], dims)
    return dims, spec, quant, quantized


def _check_alignment_heads(path: Path, info: tuple[str, tuple[int, ...]], dims) -> None:
    dtype, shape = info
    if dtype not in ("I32", "I64") or len(shape) != 2 or shape[1] != 2:
        raise ModelFormatError(f"{path}: tensor 'alignment_heads' must be int [n, 2], "
                               f"found {dtype}{list(shape)}")


def load_model(path: str | Path, dtype: mx.Dtype = mx.float32) -> Whisper:
    """A ready model from an MLX folder; float weights are cast to ``dtype``."""
    folder = Path(path)
    dims, spec, quant, quantized = validate_folder(folder)
    model = Whisper(dims, spec, dtype=dtype)
    if quant is not None and quantized:
        quantize_model(model, bits=quant["bits"], group_size=quant["group_size"], only=quantized)
    weights = mx.load(str(folder / WEIGHTS_FILE))
    heads = weights.pop("alignment_heads", None)
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
               for k, v in weights.items()}
    have = dict(tree_flatten(model.parameters()))
    have.pop("alignment_heads", None)
    if set(have) != set(weights):  # the header checks should make this unreachable
        diff = sorted(set(have) ^ set(weights))
        raise ModelFormatError(f"{folder / WEIGHTS_FILE}: parameters do not match the model: {diff[:5]}")
    model.update(tree_unflatten(list(weights.items())))
    if heads is not None:
        heads_np = _valid_heads(folder, heads, dims)
        model.set_alignment_heads(heads_np)
    mx.eval(model.parameters())
    return model


def _valid_heads(folder: Path, heads: mx.array, dims):
    import numpy as np

    arr = np.array(heads).astype(np.int64)
    if arr.size and (arr[:, 0].min() < 0 or arr[:, 0].max() >= dims.n_text_layer
                     or arr[:, 1].min() < 0 or arr[:, 1].max() >= dims.n_text_head):
        raise ModelFormatError(f"{folder / WEIGHTS_FILE}: alignment_heads {arr.tolist()} outside "
                               f"{dims.n_text_layer} layers x {dims.n_text_head} heads")
    return arr.astype(np.int32)
