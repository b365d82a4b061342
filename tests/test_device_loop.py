"""The decode loop with one sync per token (mlx_bald.device_loop) gives mlx-whisper's tokens:
its device filters against mlx-whisper's host filters on constructed histories (timestamp pairs,
lone timestamps, end-of-text, the first step), whole decodes on a tiny random model with
Whisper's vocabulary (greedy, sampled best-of, batched, language detection, with and without
timestamps), and whisper-base on real clips (slow)."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_whisper.decoding import DecodingOptions, DecodingTask
from mlx_whisper.decoding import decode as mlx_whisper_decode

from mlx_bald.decoding import decode
from mlx_bald.device_loop import DeviceDecodingTask, DeviceFilters
from mlx_helpers import random_mel, random_model, tiny_dims

EOT, TB = 50257, 50364  # multilingual vocabulary: end-of-text, first timestamp


def _model(ts_scale: float = 0.1):
    """Tiny, with Whisper's 51865 tokens; text rows scaled up, timestamp rows down, so that it
    chooses text like a trained model (see test_beam_search)."""
    dims = tiny_dims(n_vocab=51865, n_text_ctx=64, n_audio_ctx=12)
    model = random_model(dims, seed=3)
    w = np.array(model.decoder.token_embedding.weight)
    w[:EOT] *= 4
    w[TB:] *= ts_scale
    model.decoder.token_embedding.weight = mx.array(w)
    return model, dims


def _histories(rng, n_rows: int, n_sampled: int) -> np.ndarray:
    """Sampled tokens ending in every pattern the rules tell apart: text, one timestamp, two."""
    kinds = {"text": lambda: rng.integers(0, EOT), "ts": lambda: rng.integers(TB, 51865),
             "eot": lambda: EOT}
    rows = []
    for r in range(n_rows):
        pattern = [("text", "ts", "eot")[(r + i) % 3] if (r + i) % 4 else "ts" for i in range(n_sampled)]
        rows.append([kinds[k]() for k in pattern])
    return np.array(rows, dtype=np.int32).reshape(n_rows, n_sampled)


@pytest.mark.parametrize("without_timestamps", [False, True])
@pytest.mark.parametrize("n_sampled", [0, 1, 2, 5])
def test_device_filters_equal_mlx_whispers(without_timestamps, n_sampled):
    model, _ = _model()
    rng = np.random.default_rng(n_sampled)
    for max_initial in (1.0, None):
        options = DecodingOptions(language="en", without_timestamps=without_timestamps, fp16=False,
                                  max_initial_timestamp=max_initial)
        task = DecodingTask(model, options)
        device = DeviceFilters.from_task(task, compile=False)
        compiled = DeviceFilters.from_task(task, compile=True)
        prompt = np.tile(np.array(task.initial_tokens, dtype=np.int32), (12, 1))
        tokens = mx.array(np.concatenate([prompt, _histories(rng, 12, n_sampled)], axis=1))
        logits = rng.standard_normal((12, 51865)).astype(np.float32) * 3
        logits[:, TB:] += np.linspace(-6, 12, 12)[:, None]  # timestamps from unlikely to likeliest
        expected = mx.array(logits)
        for f in task.logit_filters:
            expected = f.apply(expected, tokens)
        for filters in (device, compiled):
            got = filters.apply(mx.array(logits), tokens)
            assert np.array_equal(np.array(got), np.array(expected))


def _same(a, b) -> None:
    for x, y in zip(a, b):
        assert x.tokens == y.tokens
        assert x.text == y.text and x.language == y.language
        assert x.avg_logprob == pytest.approx(y.avg_logprob, abs=1e-6)
        assert x.no_speech_prob == pytest.approx(y.no_speech_prob, abs=1e-7)


@pytest.mark.parametrize("without_timestamps", [False, True])
def test_greedy_decode_is_mlx_whispers_token_for_token(without_timestamps):
    model, dims = _model()
    mel = random_mel(dims, batch=3, seed=1)
    for language in ("en", None):
        options = DecodingOptions(language=language, without_timestamps=without_timestamps, fp16=False)
        ours = DeviceDecodingTask(model, options)
        assert ours.on_device
        _same(ours.run(mel), mlx_whisper_decode(model, mel, options))
    one = DecodingOptions(language="en", without_timestamps=without_timestamps, fp16=False, sample_len=5)
    _same([decode(model, mel[0], one)], [mlx_whisper_decode(model, mel[0], one)])
    assert len(decode(model, mel[0], one).tokens) <= 5


def test_sampled_best_of_is_mlx_whispers_with_the_same_seed():
    model, dims = _model(ts_scale=1.0)
    mel = random_mel(dims, batch=2, seed=2)
    for wt, best_of, batch in ((False, 3, mel[:1]), (True, 3, mel[:1]), (False, None, mel)):
        options = DecodingOptions(language="en", temperature=0.8, best_of=best_of, without_timestamps=wt,
                                  fp16=False, sample_len=12)
        mx.random.seed(7)
        ours = decode(model, batch, options)
        mx.random.seed(7)
        theirs = mlx_whisper_decode(model, batch, options)
        _same(ours, theirs)


def test_unknown_filter_keeps_the_host_path():
    model, _ = _model()

    class Other(DecodingTask):
        def __init__(self, m, o):
            super().__init__(m, o)
            self.logit_filters.append(object())

    assert DeviceFilters.from_task(Other(model, DecodingOptions(fp16=False))) is None


@pytest.mark.slow
def test_whisper_base_real_clips_token_for_token():
    from mlx_bald.data import load_set
    from mlx_bald.transcribe import get_model
    from benchmarks.engines import window_mel

    model = get_model("whisper-base", mx.float32)
    clips = load_set("librivox")[:2] + load_set("asterisk-en:test")[:2]
    for clip in clips:
        features = model.embed_audio(window_mel(clip.audio, model.dims.n_mels)[None])
        for wt in (False, True):
            options = DecodingOptions(language="en", without_timestamps=wt, fp16=False)
            ours, theirs = decode(model, features, options), mlx_whisper_decode(model, features, options)
            _same(ours, theirs)
            assert wt or any(t >= TB for t in ours[0].tokens[1:])  # timestamps, and not only the first
