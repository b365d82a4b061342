"""CTranslate2 reader and lossless conversion, on a synthetic tiny model.bin."""
import struct

import numpy as np
import pytest

from converters.ct2_reader import read_ct2
from converters.ct2_to_whisper import ct2_to_openai
from converters.whisper_names import hf_to_mlx, mlx_to_hf
from mlx_bald.errors import ModelFormatError


def _string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ct2(path, variables: dict[str, np.ndarray], aliases=()):
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
             np.dtype(np.int32): 3, np.dtype(np.float16): 4}
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, arr in variables.items():
        arr = np.asarray(arr)
        out += _string(name) + struct.pack("<B", arr.ndim)
        out += b"".join(struct.pack("<I", d) for d in arr.shape)
        raw = arr.tobytes()
        out += struct.pack("<B", codes[arr.dtype]) + struct.pack("<I", len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    for a, t in aliases:
        out += _string(a) + _string(t)
    path.write_bytes(out)


def tiny_ct2(d=8, heads=2, vocab=20, n_mels=4, audio_ctx=6, text_ctx=5, layers=1, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    v: dict[str, np.ndarray] = {"encoder/num_heads": np.array(heads, np.int16),
                                "decoder/num_heads": np.array(heads, np.int16)}
    for side in ("encoder", "decoder"):
        for i in range(layers):
            p = f"{side}/layer_{i}"
            kb = np.zeros(d, np.float16)
            v |= {f"{p}/self_attention/linear_0/weight": f(3 * d, d),
                  f"{p}/self_attention/linear_0/bias": np.concatenate([f(d), kb, f(d)]),
                  f"{p}/self_attention/linear_1/weight": f(d, d), f"{p}/self_attention/linear_1/bias": f(d),
                  f"{p}/self_attention/layer_norm/gamma": f(d), f"{p}/self_attention/layer_norm/beta": f(d),
                  f"{p}/ffn/linear_0/weight": f(4 * d, d), f"{p}/ffn/linear_0/bias": f(4 * d),
                  f"{p}/ffn/linear_1/weight": f(d, 4 * d), f"{p}/ffn/linear_1/bias": f(d),
                  f"{p}/ffn/layer_norm/gamma": f(d), f"{p}/ffn/layer_norm/beta": f(d)}
            if side == "decoder":
                v |= {f"{p}/attention/linear_0/weight": f(d, d), f"{p}/attention/linear_0/bias": f(d),
                      f"{p}/attention/linear_1/weight": f(2 * d, d),
                      f"{p}/attention/linear_1/bias": np.concatenate([kb, f(d)]),
                      f"{p}/attention/linear_2/weight": f(d, d), f"{p}/attention/linear_2/bias": f(d),
                      f"{p}/attention/layer_norm/gamma": f(d), f"{p}/attention/layer_norm/beta": f(d)}
        v |= {f"{side}/layer_norm/gamma": f(d), f"{side}/layer_norm/beta": f(d)}
    v |= {"encoder/conv1/weight": f(d, n_mels, 3), "encoder/conv1/bias": f(d),
          "encoder/conv2/weight": f(d, d, 3), "encoder/conv2/bias": f(d),
          "encoder/position_encodings/encodings": f(audio_ctx, d),
          "decoder/embeddings/weight": f(vocab, d), "decoder/position_encodings/encodings": f(text_ctx, d)}
    return v


def test_reader_round_trips_every_variable_and_alias(tmp_path):
    v = tiny_ct2()
    write_ct2(tmp_path / "model.bin", v, aliases=[("decoder/projection/weight", "decoder/embeddings/weight")])
    got = read_ct2(tmp_path / "model.bin")
    for k, arr in v.items():
        np.testing.assert_array_equal(got[k], arr)
    np.testing.assert_array_equal(got["decoder/projection/weight"], v["decoder/embeddings/weight"])


def test_conversion_unfuses_qkv_exactly(tmp_path):
    v = tiny_ct2()
    w, dims = ct2_to_openai(v)
    assert (dims.n_audio_state, dims.n_audio_head, dims.n_vocab, dims.n_mels) == (8, 2, 20, 4)
    assert (dims.n_audio_layer, dims.n_text_layer, dims.n_audio_ctx, dims.n_text_ctx) == (1, 1, 6, 5)
    fused = v["encoder/layer_0/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(w["encoder.blocks.0.attn.key.weight"], fused[8:16])
    np.testing.assert_array_equal(w["decoder.blocks.0.cross_attn.value.weight"],
                                  v["decoder/layer_0/attention/linear_1/weight"][8:])
    assert "encoder.blocks.0.attn.key.bias" not in w  # Whisper keys have no bias


def test_truncated_model_bin_is_a_clear_error(tmp_path):
    write_ct2(tmp_path / "model.bin", tiny_ct2())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_ct2(tmp_path / "cut.bin")
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError):
        read_ct2(tmp_path / "junk.bin")


def test_name_maps_are_inverse():
    names = ["encoder.blocks.3.attn.query.weight", "decoder.blocks.0.cross_attn_ln.bias",
             "decoder.blocks.1.cross_attn.out.bias", "encoder.blocks.0.mlp1.down.weight",
             "decoder.token_embedding.weight_a", "decoder.positional_embedding", "encoder.conv2.bias",
             "encoder.ln_post.weight", "decoder.ln.bias", "decoder.blocks.2.mlp_ln.weight"]
    for n in names:
        assert hf_to_mlx(mlx_to_hf(n)) == n
    assert mlx_to_hf("decoder.blocks.1.cross_attn.out.bias") == "model.decoder.layers.1.encoder_attn.out_proj.bias"
    assert mlx_to_hf("encoder.blocks.0.mlp1.down.weight") == "model.encoder.layers.0.fc1.down.weight"
