"""Speculative decoding (mlx_bald.speculative) is exact: the target's greedy output, token for
token, with any draft -- a random one (most proposals rejected: the rollback path), the target
itself (all accepted: long verify passes), one with its own encoder -- with and without
timestamps, up to the length limit; what cannot be speculative falls back and says so once."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_whisper.decoding import DecodingOptions

from mlx_bald.decoding import decode
from mlx_bald.errors import MlxBaldError
from mlx_bald.speculative import SpeculativeWhisper
from mlx_helpers import random_mel, random_model, tiny_dims


def _real_vocab_model(seed: int):
    """Tiny, with Whisper's 51865 tokens, choosing text like a trained model (see test_beam_search)."""
    dims = tiny_dims(n_vocab=51865, n_text_ctx=64, n_audio_ctx=12)
    model = random_model(dims, seed=seed)
    w = np.array(model.decoder.token_embedding.weight)
    w[:50257] *= 4
    w[50364:] *= 0.1
    model.decoder.token_embedding.weight = mx.array(w)
    return model, dims


def _same(a, b):
    assert a.tokens == b.tokens and a.text == b.text
    assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)
    assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-5)


@pytest.mark.parametrize("timestamps", [False, True])
def test_random_draft_gives_the_targets_greedy_output(timestamps):
    target, dims = _real_vocab_model(3)
    draft, _ = _real_vocab_model(11)
    draft.encoder = target.encoder  # BaldWhisper-like: same encoder, other decoder
    spec = SpeculativeWhisper(target, draft)
    assert spec.shares_encoder
    options = DecodingOptions(language="en", fp16=False, sample_len=24, without_timestamps=not timestamps)
    for seed in range(3):
        mel = random_mel(dims, seed=seed)[0]
        _same(spec.decode(mel, options), decode(target, mel, options))
    assert spec.stats.proposed > 0 and spec.stats.accepted < spec.stats.proposed  # rejections rolled back
    assert spec.stats.windows == 3


def test_the_target_as_its_own_draft_accepts_everything_in_fewer_passes():
    target, dims = _real_vocab_model(3)
    spec = SpeculativeWhisper(target, target)
    options = DecodingOptions(language="en", fp16=False, sample_len=30, without_timestamps=True)
    mel = random_mel(dims, seed=4)[0]
    plain = decode(target, mel, options)
    _same(spec.decode(mel, options), plain)
    assert spec.stats.acceptance == 1.0
    assert spec.stats.target_passes < spec.stats.tokens  # several tokens per target pass


def test_a_draft_with_its_own_encoder_and_the_length_limit():
    target, dims = _real_vocab_model(3)
    draft, _ = _real_vocab_model(5)
    spec = SpeculativeWhisper(target, draft, k=3)
    assert not spec.shares_encoder
    for sample_len in (1, 2, 7):  # the limit falls inside a verify round
        options = DecodingOptions(language="en", fp16=False, sample_len=sample_len, without_timestamps=True)
        mel = random_mel(dims, seed=8)[0]
        _same(spec.decode(mel, options), decode(target, mel, options))


def test_what_cannot_be_speculative_falls_back_and_says_so_once(capsys):
    target, dims = _real_vocab_model(3)
    spec = SpeculativeWhisper(target, _real_vocab_model(5)[0])
    mel = random_mel(dims, seed=2)[0]
    for _ in range(2):
        mx.random.seed(0)
        got = spec.decode(mel, DecodingOptions(language="en", fp16=False, sample_len=8, temperature=0.6))
    mx.random.seed(0)
    want = decode(target, mel, DecodingOptions(language="en", fp16=False, sample_len=8, temperature=0.6))
    assert got.tokens == want.tokens
    batch = random_mel(dims, batch=2, seed=2)
    both = spec.decode(batch, DecodingOptions(language="en", fp16=False, sample_len=8))
    assert [r.tokens for r in both] == [r.tokens for r in decode(target, batch, DecodingOptions(
        language="en", fp16=False, sample_len=8))]
    err = capsys.readouterr().err
    assert err.count("temperature > 0") == 1 and err.count("several windows") == 1
    assert spec.stats.proposed == 0


def test_a_draft_with_another_tokenizer_is_refused():
    target, _ = _real_vocab_model(3)
    with pytest.raises(MlxBaldError, match="vocabulary"):
        SpeculativeWhisper(target, random_model(tiny_dims(n_vocab=51864, n_text_ctx=64)))
