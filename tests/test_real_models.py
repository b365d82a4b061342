"""Real OpenAI weights (from the registry packages) on real speech (LibriVox)."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["whisper-base", "whisper-tiny.en"])
def test_converted_model_loads_strictly_and_matches_mlx(name):
    import mlx.core as mx
    import torch
    from transformers import WhisperForConditionalGeneration

    from mlx_bald.hub import resolve_model
    from mlx_bald.load import load_model

    hf, info = WhisperForConditionalGeneration.from_pretrained(
        resolve_model(name, "hf"), output_loading_info=True, dtype=torch.float32)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    mlx_model = load_model(resolve_model(name, "mlx"), dtype=mx.float32)

    rng = np.random.default_rng(0)
    mel = (rng.standard_normal((1, hf.config.num_mel_bins, 3000)) * 0.5).astype(np.float32)
    sot = hf.config.decoder_start_token_id
    tokens = np.array([[sot, 440, 1723, 11, 257, 1332]])
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens)).logits.numpy()
    got = np.array(mlx_model(mx.array(mel.transpose(0, 2, 1)), mx.array(tokens)))
    # fp16 weights computed in fp32 by two frameworks: agree to fp16 precision
    assert np.abs(ref - got).max() < 0.05
    assert (ref.argmax(-1) == got.argmax(-1)).all()


@pytest.mark.parametrize("engine", ["mlx", "torch"])
@pytest.mark.parametrize("name,limit", [("whisper-base", 4.0), ("whisper-tiny.en", 8.0)])
def test_stock_wer_on_librivox(engine, name, limit):
    from mlx_bald.evaluate import evaluate

    r = evaluate(name, "librivox", engine=engine, progress=False)
    assert r.n_clips == 5 and r.normalizer == "whisper-english"
    assert r.wer <= limit, r.rows
