"""AdaPTwin layer-wise fine-tuning and the encoder-output cache on a tiny random Whisper."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import features, tiny_model, tokens  # noqa: E402

from mlx_bald.compress import apply_spec  # noqa: E402
from mlx_bald.compress.distill import cache_encoder_outputs, load_cached_encoder_output  # noqa: E402
from mlx_bald.compress.layerwise import (LayerwiseConfig, compressed_layer_keys, layer_errors,  # noqa: E402
                                         layerwise_finetune)
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank  # noqa: E402


def adaptwin_spec() -> CompressionSpec:
    return CompressionSpec(
        attention={"encoder.blocks.0.attn": AttentionRank(5, 5, 1, 1),
                   "decoder.blocks.1.attn": AttentionRank(5, 5, 1, 1)},
        ffn={"encoder.blocks.0.mlp": FFNRank(20, 20, lora=2), "decoder.blocks.1.mlp": FFNRank(20, 20, lora=2)},
        recipe=["adaptwin"])


def batches(epoch: int):
    return [{"input_features": features(seed=10 + i), "decoder_input_ids": tokens(seed=20 + i)} for i in range(3)]


@pytest.mark.parametrize("one_at_a_time", [True, False])
def test_layerwise_finetune_reduces_layer_error(one_at_a_time):
    original = tiny_model()
    student = apply_spec(tiny_model(), adaptwin_spec())
    keys = compressed_layer_keys(student)
    assert keys == ["encoder.blocks.0", "decoder.blocks.1"]
    before = layer_errors(original, student, batches(0))
    untouched = student.model.decoder.layers[0].fc1.weight.clone()
    orig_w = original.model.encoder.layers[0].fc1.weight.clone()
    layerwise_finetune(original, student, batches, LayerwiseConfig(lr=3e-3, epochs=6),
                       one_at_a_time=one_at_a_time, progress=False)
    after = layer_errors(original, student, batches(0))
    for k in keys:
        assert after[k] < 0.7 * before[k], (k, before[k], after[k])
    assert torch.equal(untouched, student.model.decoder.layers[0].fc1.weight)
    assert torch.equal(orig_w, original.model.encoder.layers[0].fc1.weight)


def test_encoder_cache_written_once_in_fp16(tmp_path):
    model = tiny_model()
    clips = [(f"spk/clip-{i}", features(batch=1, seed=i)[0]) for i in range(3)]
    assert cache_encoder_outputs(model, clips, tmp_path, batch_size=2, progress=False) == 3
    assert cache_encoder_outputs(model, clips, tmp_path, batch_size=2, progress=False) == 0
    got = load_cached_encoder_output(tmp_path, "spk/clip-1")
    assert got.dtype == torch.float16 and got.shape == (8, 64)
    with torch.no_grad():
        want = model.model.encoder(clips[1][1][None]).last_hidden_state[0]
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)
