"""Beam search (mlx_bald.decoding): the numpy bookkeeping on constructed cases, beam 1 = greedy
and batched = one by one on a tiny random model with Whisper's real vocabulary, and the real
whisper-tiny.en on real speech (slow)."""
from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx_whisper.decoding import DecodingOptions

from mlx_bald.decoding import BeamSearch, decode
from mlx_helpers import random_model, tiny_dims

EOT, A, B, C = 0, 1, 2, 3


def _toy_logprobs(prefix: tuple[int, ...]) -> np.ndarray:
    """A 4-token language where the likeliest first token (A) leads nowhere good."""
    table = {(): [0.04, 0.5, 0.4, 0.06], (A,): [0.3, 0.26, 0.2, 0.24], (B,): [0.95, 0.025, 0.015, 0.01]}
    return np.log(np.array(table.get(prefix, [0.97, 0.01, 0.01, 0.01])))


def _greedy(max_len: int = 5) -> tuple[tuple[int, ...], float]:
    seq, score = (), 0.0
    while len(seq) < max_len:
        lp = _toy_logprobs(seq)
        t = int(lp.argmax())
        seq, score = seq + (t,), score + lp[t]
        if t == EOT:
            break
    return seq, score


def _beam(beam_size: int, patience: float | None = None, max_len: int = 5):
    search = BeamSearch(beam_size, EOT, patience)
    tokens = np.zeros((beam_size, 0), dtype=np.int64)
    sums = np.zeros(beam_size)
    for _ in range(max_len):
        lps = np.stack([_toy_logprobs(tuple(row)) for row in tokens.tolist()])
        top_ids = np.argsort(-lps, axis=-1)[:, : beam_size + 1]
        tokens, sums, _, completed = search.step(tokens, sums, np.take_along_axis(lps, top_ids, -1), top_ids)
        if completed:
            break
    return search.finalize(tokens, sums)


def test_beam_finds_a_likelier_sequence_than_greedy():
    greedy_seq, greedy_score = _greedy()
    assert greedy_seq[0] == A
    seqs, scores = _beam(beam_size=2)
    best = int(np.argmax(scores[0]))
    assert seqs[0][best] == (B, EOT)
    assert scores[0][best] == pytest.approx(math.log(0.4) + math.log(0.95))
    assert scores[0][best] > greedy_score + 0.5


def test_beam_one_is_greedy_and_patience_collects_more_candidates():
    seqs, scores = _beam(beam_size=1)
    assert seqs[0] == [_greedy()[0]] and scores[0][0] == pytest.approx(_greedy()[1])
    assert len(_beam(beam_size=2)[0][0]) == 2
    assert len(_beam(beam_size=2, patience=2.0)[0][0]) == 4  # round(2 * 2.0) finished sequences
    with pytest.raises(ValueError):
        BeamSearch(0, EOT)


def _real_vocab_model():
    """Tiny, with Whisper's 51865 tokens. A random model puts its mass on the 1501 timestamp
    tokens, where mlx-whisper's timestamp rule then allows nothing (argmax of all -inf); text
    rows scaled up and timestamp rows down make it choose like a trained model."""
    dims = tiny_dims(n_vocab=51865, n_text_ctx=64, n_audio_ctx=12)
    model = random_model(dims, seed=3)
    w = np.array(model.decoder.token_embedding.weight)
    w[:50257] *= 4
    w[50364:] *= 0.1
    model.decoder.token_embedding.weight = mx.array(w)
    return model, dims


def _features(dims, n: int, seed: int) -> mx.array:
    rng = np.random.default_rng(seed)
    return mx.array(rng.standard_normal((n, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32))


@pytest.mark.parametrize("timestamps", [False, True])
def test_beam_one_equals_greedy_on_a_model(timestamps):
    model, dims = _real_vocab_model()
    options = DecodingOptions(language="en", fp16=False, sample_len=12, without_timestamps=not timestamps)
    for seed in range(3):
        feats = _features(dims, 1, seed)
        greedy = decode(model, feats, options)[0]
        beam1 = decode(model, feats, options, beam_size=1)[0]
        assert beam1.tokens == greedy.tokens and beam1.text == greedy.text
        assert beam1.avg_logprob == pytest.approx(greedy.avg_logprob, abs=1e-4)
        assert beam1.no_speech_prob == pytest.approx(greedy.no_speech_prob, abs=1e-5)


def test_batched_beam_equals_one_audio_at_a_time():
    model, dims = _real_vocab_model()
    options = DecodingOptions(language="en", fp16=False, sample_len=10, beam_size=3, length_penalty=0.6)
    feats = _features(dims, 3, seed=7)
    together = decode(model, feats, options)
    alone = [decode(model, feats[i: i + 1], options)[0] for i in range(3)]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.avg_logprob for r in together] == pytest.approx([r.avg_logprob for r in alone], abs=1e-4)


@pytest.mark.slow
def test_beam_five_on_real_speech_with_timestamps():
    from mlx_bald.data.librivox import load_librivox
    from mlx_bald.evaluate import corpus_wer
    from mlx_bald.transcribe import transcribe

    clip = load_librivox()[0]
    greedy = transcribe(clip.audio, "whisper-tiny.en", temperature=0.0)
    beam = transcribe(clip.audio, "whisper-tiny.en", temperature=0.0, beam_size=5, word_timestamps=True)
    assert beam["segments"] and all(0 <= s["start"] < s["end"] <= clip.seconds + 1 for s in beam["segments"])
    assert all("start" in w for s in beam["segments"] for w in s["words"])
    wer_beam, _ = corpus_wer([clip.text], [beam["text"]], "en")
    wer_greedy, _ = corpus_wer([clip.text], [greedy["text"]], "en")
    assert wer_beam <= max(wer_greedy, 10.0)
