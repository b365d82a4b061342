"""Compressed PyTorch checkpoint -> MLX folder: for every compression kind the MLX model's
logits equal the PyTorch compressed model's on the same input (fp32)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mlx.core as mx  # noqa: E402

from converters.torch_to_mlx import convert_checkpoint, sinusoids  # noqa: E402
from mlx_bald.compress.ops.model import apply_spec, load_compressed, save_compressed  # noqa: E402
from mlx_bald.errors import ModelFormatError  # noqa: E402
from mlx_bald.load import load_model  # noqa: E402
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank, MergeGroup  # noqa: E402
from tests.test_compress_ops import N_MELS, SRC, tiny_model  # noqa: E402

SPECS = {
    "dense": CompressionSpec(),
    "merged_decoder": CompressionSpec(decoder_merge=[MergeGroup([0, 1], [0.3, 0.7]), MergeGroup([2, 3], [1.0, 2.0])]),
    "one_pair_merged": CompressionSpec(decoder_merge=[MergeGroup([0], [1.0]), MergeGroup([1], [1.0]),
                                                      MergeGroup([2, 3], [0.2, 0.8])], embedding_rank=12),
    "factored_embedding": CompressionSpec(embedding_rank=12),
    "lowrank_attention": CompressionSpec(attention={
        "encoder.blocks.0.attn": AttentionRank(8, 12), "decoder.blocks.1.attn": AttentionRank(6, 10),
        "decoder.blocks.2.cross_attn": AttentionRank(10, 4)}),
    "lowrank_ffn": CompressionSpec(ffn={"encoder.blocks.1.mlp": FFNRank(16, 32),
                                        "decoder.blocks.0.mlp": FFNRank(None, 16)}),
    "pruned_encoder": CompressionSpec(encoder_pruned=[0]),
    "all_together": CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.2, 0.8]), MergeGroup([2, 3], [0.5, 0.5])],
        embedding_rank=16, encoder_pruned=[1],
        attention={"encoder.blocks.0.attn": AttentionRank(8, 8), "decoder.blocks.1.cross_attn": AttentionRank(12, 8)},
        ffn={"decoder.blocks.0.mlp": FFNRank(16, 16)}),
}


def _stock_tiny(seed=0):
    model = tiny_model(seed, encoder_ffn_dim=4 * 64, decoder_ffn_dim=4 * 64)
    with torch.no_grad():  # Whisper's encoder positions are fixed sinusoids (MLX computes them)
        pos = model.model.encoder.embed_positions.weight
        pos.copy_(torch.from_numpy(sinusoids(*pos.shape)).float())
    return model


def _compressed_checkpoint(tmp_path, spec):
    model = apply_spec(_stock_tiny(), spec).eval()
    return save_compressed(model, spec, tmp_path / "torch")


@pytest.mark.parametrize("kind", list(SPECS))
def test_mlx_logits_equal_torch_compressed(tmp_path, kind):
    spec = SPECS[kind]
    ckpt = _compressed_checkpoint(tmp_path, spec)
    torch_model, _ = load_compressed(ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "mlx", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert CompressionSpec.from_dict(cfg.get("compression")) == spec
    mlx_model = load_model(out, dtype=mx.float32)

    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, N_MELS, 2 * SRC, generator=g)
    tokens = torch.randint(0, 97, (2, 7), generator=g)
    with torch.no_grad():
        ref = torch_model(input_features=feats, decoder_input_ids=tokens).logits.numpy()
    got = np.array(mlx_model(mx.array(feats.numpy().transpose(0, 2, 1)), mx.array(tokens.numpy())))
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)


def test_spec_tensor_disagreement_names_the_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = _compressed_checkpoint(tmp_path, SPECS["lowrank_attention"])
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mlx_bald_compression"]["attention"]["decoder.blocks.1.attn"]["qk_rank"] = 7  # edited config
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"decoder\.blocks\.1\.attn\.(query|key)"):
        convert_checkpoint(ckpt, tmp_path / "mlx")
    assert not (tmp_path / "mlx").exists()  # nothing half-written

    ckpt = _compressed_checkpoint(tmp_path, SPECS["dense"])
    state = load_file(str(ckpt / "model.safetensors"))
    del state["model.decoder.layers.0.fc1.weight"]
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"decoder\.blocks\.0\.mlp1\.weight"):
        convert_checkpoint(ckpt, tmp_path / "mlx2")
    assert not (tmp_path / "mlx2").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    ckpt = _compressed_checkpoint(tmp_path, SPECS["dense"])
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError):
        convert_checkpoint(ckpt, tmp_path / "mlx")


def test_quantized_conversion_is_recorded_and_loads(tmp_path):
    ckpt = _compressed_checkpoint(tmp_path, SPECS["merged_decoder"])
    out = convert_checkpoint(ckpt, tmp_path / "q8", quantize_bits=8)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["compression"]["quantization"] == {"bits": 8, "group_size": 64}
    model = load_model(out, dtype=mx.float32)
    feats = mx.array(np.random.default_rng(0).standard_normal((1, 2 * SRC, N_MELS)).astype(np.float32))
    logits = model(feats, mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 100) and bool(mx.all(mx.isfinite(logits)))
