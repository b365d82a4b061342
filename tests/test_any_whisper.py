"""Any Whisper, not only base: the compressor reads layer counts, heads, vocabulary, languages
and mel bins from the model's config. Tiny random configs shaped like tiny, small and large-v3
(100 languages, 128 mel bins) go through the bald compression (default merge groups = pairs of
the model's own decoder layers, factored embedding), a training step, and the MLX conversion,
whose logits must equal torch's."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
mx = pytest.importorskip("mlx.core")

from converters.torch_to_mlx import convert_checkpoint, sinusoids  # noqa: E402
from mlx_bald.compress.train.data import collate_tokens, token_sequence  # noqa: E402
from mlx_bald.compress.train.distill import DistillConfig, train_decoder  # noqa: E402
from mlx_bald.compress.ops.embedding import factorize_embedding  # noqa: E402
from mlx_bald.compress.ops.model import SPEC_KEY, apply_spec, load_compressed, save_compressed  # noqa: E402
from mlx_bald.compress.recipes.bald import default_groups  # noqa: E402
from mlx_bald.load import load_model  # noqa: E402
from mlx_bald.spec import CompressionSpec, MergeGroup  # noqa: E402
from mlx_bald.vocab import is_multilingual, num_languages, tokenizer_for  # noqa: E402
from tests.test_compress_ops import randomize  # noqa: E402

SRC = 8
# (layers, heads, mel bins, vocabulary) as in the real models; widths shrunk to stay fast
SHAPES = {"tiny": (4, 6, 80, 51865, 96), "small": (12, 12, 80, 51865, 96), "large-v3": (32, 20, 128, 51866, 160)}


def _model(shape: str):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    layers, heads, mels, vocab, d = SHAPES[shape]
    eot = tokenizer_for(vocab).eot
    cfg = WhisperConfig(d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                        decoder_attention_heads=heads, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d, vocab_size=vocab,
                        num_mel_bins=mels, max_source_positions=SRC, max_target_positions=32, pad_token_id=eot,
                        bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=tokenizer_for(vocab).sot,
                        suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    model = randomize(WhisperForConditionalGeneration(cfg), 0).eval()
    with torch.no_grad():
        pos = model.model.encoder.embed_positions.weight
        pos.copy_(torch.from_numpy(sinusoids(*pos.shape)).float())
    return model


def test_the_vocabulary_says_how_many_languages_and_which_task_tokens():
    assert num_languages(51865) == 99 and num_languages(51866) == 100 and not is_multilingual(51864)
    base, v3 = token_sequence("ahoj", "cs", 51865)[0], token_sequence("ahoj", "cs", 51866)[0]
    assert base[:4] == [50258, 50283, 50359, 50363]  # sot, <|cs|>, transcribe, notimestamps
    assert v3[:4] == [50258, 50283, 50360, 50364]  # large-v3: one more language shifts the task tokens
    assert token_sequence("hi", None, 51864)[0][:2] == [50257, 50362]  # .en: sot, notimestamps


@pytest.mark.parametrize("shape", list(SHAPES))
def test_bald_compression_of_any_shape_trains_and_converts(tmp_path, shape):
    layers, heads, mels, vocab, d = SHAPES[shape]
    assert default_groups(layers) == [[i, i + 1] for i in range(0, layers, 2)]
    spec = CompressionSpec(decoder_merge=[MergeGroup(g, [0.4, 0.6]) for g in default_groups(layers)], recipe=["bald"])
    student = apply_spec(_model(shape), spec)
    assert student.config.decoder_layers == layers // 2
    factorize_embedding(student, 8)
    spec.embedding_rank = 8
    setattr(student.config, SPEC_KEY, spec.to_dict())

    # two distillation steps against the uncompressed model, on this vocabulary's tokens
    g = torch.Generator().manual_seed(1)
    rows = [(f"c{i}", token_sequence("a b c d"[: 1 + 2 * i], "en", vocab, 16)[0], 4) for i in range(3)]
    ids, labels = collate_tokens(rows, vocab)
    batch = {"encoder_hidden_states": torch.randn(3, SRC, d, generator=g), "decoder_input_ids": ids, "labels": labels}
    before = student.model.decoder.layers[0].fc1.weight.detach().clone()
    losses = train_decoder(student, _model(shape), lambda epoch: [batch], DistillConfig(steps=2, lr=1e-3), progress=False)
    assert np.isfinite(losses["loss"]) and not torch.equal(before, student.model.decoder.layers[0].fc1.weight)

    ckpt = save_compressed(student.eval(), spec, tmp_path / "torch")
    torch_model, _ = load_compressed(ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "mlx", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_mels"] == mels and cfg["n_vocab"] == vocab and cfg["n_text_layer"] == layers // 2
    mlx_model = load_model(out, dtype=mx.float32)
    assert mlx_model.num_languages == num_languages(vocab)
    feats = torch.randn(1, mels, 2 * SRC, generator=g)
    with torch.no_grad():
        ref = torch_model(input_features=feats, decoder_input_ids=ids[:1]).logits.numpy()
    got = np.array(mlx_model(mx.array(feats.numpy().transpose(0, 2, 1)), mx.array(ids[:1].numpy())))
    np.testing.assert_allclose(got, ref, atol=5e-4, rtol=1e-3)
