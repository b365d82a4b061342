import json

import pytest

from mlx_bald.spec import (AttentionRank, CompressionSpec, FFNRank, MergeGroup, Quantization,
                           SpecError)


def full_spec() -> CompressionSpec:
    return CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.3, 0.7]), MergeGroup([2, 3], [0.5, 0.5])],
        embedding_rank=96, encoder_pruned=[4],
        attention={"encoder.blocks.0.attn": AttentionRank(40, 40, 8, 8),
                   "decoder.blocks.1.cross_attn": AttentionRank(16, 32)},
        ffn={"encoder.blocks.2.mlp": FFNRank(160, None, 16)},
        quantization=Quantization(bits=4, group_size=64), recipe=["bald", "adaptwin"],
        notes={"teacher": "whisper-base"})


def test_round_trip_through_config_json():
    spec = full_spec()
    config = {"n_mels": 80, "compression": spec.to_dict()}
    back = CompressionSpec.from_dict(json.loads(json.dumps(config))["compression"])
    assert back == spec
    assert CompressionSpec.from_json(spec.to_json()) == spec


def test_empty_spec_is_identity_and_derived_shapes():
    assert CompressionSpec.from_dict(None).is_identity
    spec = full_spec()
    assert not spec.is_identity
    assert spec.n_decoder_layers(4) == 2 and spec.n_encoder_layers(6) == 5
    assert spec.kept_encoder_layers(6) == [0, 1, 2, 3, 5]
    spec.validate(n_audio_layer=6, n_text_layer=4, d_model=64)


@pytest.mark.parametrize("bad", [
    CompressionSpec(decoder_merge=[MergeGroup([0, 2], [1, 1])]),  # not adjacent
    CompressionSpec(decoder_merge=[MergeGroup([0, 1], [1])]),  # weights/layers mismatch
    CompressionSpec(decoder_merge=[MergeGroup([1, 2], [1, 1]), MergeGroup([0], [1])]),  # order
    CompressionSpec(encoder_pruned=[9]),
    CompressionSpec(attention={"encoder.blocks.0.cross_attn": AttentionRank(8, 8)}),
    CompressionSpec(attention={"decoder.layers.0.attn": AttentionRank(8, 8)}),
    CompressionSpec(ffn={"encoder.blocks.0.attn": FFNRank(8, 8)}),
    CompressionSpec(quantization=Quantization(bits=7)),
])
def test_invalid_specs_are_refused(bad):
    with pytest.raises(SpecError):
        bad.validate(n_audio_layer=6, n_text_layer=4)


def test_merge_must_cover_all_decoder_layers():
    with pytest.raises(SpecError, match="covers"):
        CompressionSpec(decoder_merge=[MergeGroup([0, 1], [1, 1])]).validate(n_text_layer=4)


def test_unknown_field_and_newer_version_are_clear_errors():
    with pytest.raises(SpecError, match="malformed"):
        CompressionSpec.from_dict({"attention": {"encoder.blocks.0.attn": {"rank": 3}}})
    with pytest.raises(SpecError, match="newer"):
        CompressionSpec.from_dict({"version": 99})


def test_quantization_bits_are_checked_in_one_place():
    """The spec, the model-folder loader and the converter's --quantize all take spec.QUANT_BITS
    (what mx.quantize accepts, 5 included)."""
    from mlx_bald.cli.main import build_parser
    from mlx_bald.spec import QUANT_BITS

    assert QUANT_BITS == (2, 3, 4, 5, 6, 8)
    CompressionSpec(quantization=Quantization(bits=5)).validate()
    parser = build_parser()
    assert parser.parse_args(["convert", "x", "--out", "y", "--quantize", "5"]).quantize == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "x", "--out", "y", "--quantize", "7"])
