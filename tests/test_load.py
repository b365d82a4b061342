"""MLX model folders: save/load round trips (stock, compressed, quantized), stock folders
exchanged with mlx-whisper, and every malformed folder rejected with ModelFormatError."""
import json
import struct

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_whisper.load_models import load_model as mlx_whisper_load

from mlx_bald.errors import ModelFormatError, ModelNotFoundError
from mlx_bald.load import load_model, save_model_folder, validate_folder
from mlx_bald.models.folder import expected_shapes
from mlx_bald.models.quantize import quantize_model
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank, MergeGroup, Quantization

from mlx_helpers import max_diff, random_mel, random_model, tiny_dims

TOKENS = mx.array([[1, 5, 9, 13]])


def compressed_spec(quantization=None) -> CompressionSpec:
    return CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.5, 0.5])], encoder_pruned=[1], embedding_rank=16,
        attention={"encoder.blocks.0.attn": AttentionRank(8, 4),
                   "decoder.blocks.0.cross_attn": AttentionRank(6, 6)},
        ffn={"decoder.blocks.0.mlp": FFNRank(32, None)}, quantization=quantization)


def compressed_model(quantization=None):
    dims = tiny_dims(n_audio_layer=1, n_text_layer=1)
    spec = compressed_spec(quantization)
    model = random_model(dims, spec)
    model.set_alignment_heads(np.array([[0, 1], [0, 3]]))
    if quantization:
        quantize_model(model, quantization.bits, quantization.group_size)
    return dims, spec, model


def saved(tmp_path, quantization=None):
    dims, spec, model = compressed_model(quantization)
    return save_model_folder(model, dims, spec, tmp_path / "model"), model


def logits(model):
    return model(random_mel(model.dims), TOKENS)


@pytest.mark.parametrize("quantization", [None, Quantization(bits=8, group_size=32),
                                          Quantization(bits=4, group_size=32)])
def test_compressed_round_trip(tmp_path, quantization):
    folder, model = saved(tmp_path, quantization)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "whisper" and config["n_text_layer"] == 1
    assert CompressionSpec.from_dict(config["compression"]) == model.spec
    if quantization:
        assert config["quantization"] == {"group_size": 32, "bits": quantization.bits}
    loaded = load_model(folder)
    assert loaded.spec == model.spec
    assert loaded.alignment_heads.tolist() == [[0, 1], [0, 3]]
    assert max_diff(logits(loaded), logits(model)) == 0.0
    assert not list(tmp_path.glob(".model*"))  # no temporary folder left behind


def test_stock_folder_is_exchanged_with_mlx_whisper(tmp_path):
    dims = tiny_dims()
    ours = random_model(dims)
    folder = save_model_folder(ours, dims, CompressionSpec(), tmp_path / "stock")
    assert "compression" not in json.loads((folder / "config.json").read_text())
    theirs = mlx_whisper_load(str(folder), mx.float32)  # strict-enough: update by name
    assert max_diff(logits(ours), theirs(random_mel(dims), TOKENS)) < 1e-5
    # and a folder written from mlx-whisper's model loads into ours
    weights = dict(tree_flatten(theirs.parameters()))
    weights["alignment_heads"] = weights["alignment_heads"].astype(mx.int32)
    mx.save_safetensors(str(folder / "weights.safetensors"), weights)
    assert max_diff(logits(load_model(folder)), logits(ours)) < 1e-5


def test_quantized_stock_folder_loads_in_mlx_whisper(tmp_path):
    dims = tiny_dims()
    ours = quantize_model(random_model(dims), bits=4, group_size=32)
    spec = CompressionSpec(quantization=Quantization(bits=4, group_size=32))
    folder = save_model_folder(ours, dims, spec, tmp_path / "q4")
    theirs = mlx_whisper_load(str(folder), mx.float32)
    assert max_diff(logits(ours), theirs(random_mel(dims), TOKENS)) < 1e-5
    assert max_diff(logits(load_model(folder)), logits(ours)) == 0.0


def test_load_casts_to_dtype(tmp_path):
    folder, model = saved(tmp_path)
    half = load_model(folder, dtype=mx.float16)
    assert half.decoder.blocks[0].attn.query.weight.dtype == mx.float16
    assert half.encoder(random_mel(half.dims).astype(mx.float16)).dtype == mx.float16


@pytest.mark.parametrize("quantization", [None, Quantization(bits=4, group_size=32)])
def test_expected_shapes_match_the_built_model(quantization):
    dims, spec, model = compressed_model(quantization)
    params = {k: v.shape for k, v in tree_flatten(model.parameters()) if k != "alignment_heads"}
    quantized = {k[: -len(".scales")] for k in params if k.endswith(".scales")}
    assert quantized if quantization else not quantized
    q = quantization or Quantization(bits=0, group_size=0)
    want = expected_shapes(dims, spec, quantized, q.bits, q.group_size)
    assert params == want


# ---- malformed folders ----------------------------------------------------------------------
def rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def rewrite_weights(folder, edit):
    path = folder / "weights.safetensors"
    weights = dict(mx.load(str(path)))
    edit(weights)
    mx.save_safetensors(str(path), weights)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path / "nope")


def test_missing_or_garbled_config(tmp_path):
    folder, _ = saved(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="config.json.*not valid JSON"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_model(folder)


def test_config_missing_dims_or_bad_spec(tmp_path):
    folder, _ = saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    rewrite_config(folder, n_vocab="many")
    with pytest.raises(ModelFormatError, match="n_vocab"):
        load_model(folder)
    rewrite_config(folder, n_vocab=config["n_vocab"],
                   compression={**config["compression"], "attention": {"encoder.blocks.9.attn": {
                       "qk_rank": 4, "vo_rank": 4}}})
    with pytest.raises(ModelFormatError, match="encoder.blocks.9.attn"):
        load_model(folder)
    rewrite_config(folder, compression={"bogus_field": 1, "attention": {"x": {"qk": 1}}})
    with pytest.raises(ModelFormatError, match="compression spec"):
        load_model(folder)


def test_missing_weights_file(tmp_path):
    folder, _ = saved(tmp_path)
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no weights.safetensors"):
        load_model(folder)


@pytest.mark.parametrize("keep", [5, 200, 0.5, -10])
def test_truncated_weights(tmp_path, keep):
    folder, _ = saved(tmp_path)
    path = folder / "weights.safetensors"
    data = path.read_bytes()
    n = keep if isinstance(keep, int) and keep > 0 else (
        int(len(data) * keep) if isinstance(keep, float) else len(data) + keep)
    path.write_bytes(data[:n])
    with pytest.raises(ModelFormatError, match="weights.safetensors.*(truncated|too short)"):
        load_model(folder)


def test_garbled_header(tmp_path):
    folder, _ = saved(tmp_path)
    path = folder / "weights.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"\xff" * n
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="header"):
        load_model(folder)


def test_missing_tensor_is_named(tmp_path):
    folder, _ = saved(tmp_path)
    rewrite_weights(folder, lambda w: w.pop("decoder.blocks.0.cross_attn.key.weight"))
    with pytest.raises(ModelFormatError, match="decoder.blocks.0.cross_attn.key.weight.*missing"):
        load_model(folder)


def test_unexpected_tensor_is_named(tmp_path):
    folder, _ = saved(tmp_path)
    # low-rank attention folds the value bias into the out bias: this one must not exist
    rewrite_weights(folder, lambda w: w.update({"encoder.blocks.0.attn.value.bias": mx.zeros(16)}))
    with pytest.raises(ModelFormatError, match="unexpected tensor 'encoder.blocks.0.attn.value.bias'"):
        load_model(folder)


def test_shape_disagreeing_with_spec_is_named(tmp_path):
    folder, _ = saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["compression"]["attention"]["encoder.blocks.0.attn"]["qk_rank"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError,
                       match=r"encoder.blocks.0.attn.(query|key).weight.*shape \[32, 64\].*\[24, 64\]"):
        load_model(folder)


def test_wrong_dtype_and_alignment_heads(tmp_path):
    folder, _ = saved(tmp_path)
    rewrite_weights(folder, lambda w: w.update(
        {"decoder.ln.weight": w["decoder.ln.weight"].astype(mx.int32)}))
    with pytest.raises(ModelFormatError, match="decoder.ln.weight.*dtype"):
        validate_folder(folder)
    folder, _ = saved(tmp_path)
    rewrite_weights(folder, lambda w: w.update({"alignment_heads": mx.array([[5, 0]], mx.int32)}))
    with pytest.raises(ModelFormatError, match="alignment_heads"):
        load_model(folder)


def test_quantized_tensors_without_quantization_config(tmp_path):
    folder, _ = saved(tmp_path, Quantization(bits=8, group_size=32))
    config = json.loads((folder / "config.json").read_text())
    del config["quantization"]
    config["compression"]["quantization"] = None
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="quantized tensors"):
        load_model(folder)
