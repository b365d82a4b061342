"""Batched decoding (mlx_bald.batched) and Silero VAD (mlx_bald.vad): span packing on constructed
cases; on real LibriVox speech with whisper-tiny.en, batch 3 = batch 1 and VAD finds the speech
between silence and noise; `transcribe --batch-size/--vad` end to end."""
from __future__ import annotations

import numpy as np
import pytest

from mlx_bald.batched import Span, window_spans
from mlx_bald.vad import chunk_spans, speech_spans


def test_window_spans_cover_the_input():
    spans = window_spans(2, 16_000 * 65)
    assert [(s.start, s.end) for s in spans] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert all(s.item == 2 for s in spans)


def test_speech_spans_hysteresis_and_minimums():
    step = 512 / 16_000
    probs = np.zeros(200, np.float32)
    probs[10:40] = 0.9       # ~1 s of speech
    probs[41] = 0.2          # one quiet frame (< min_silence): same span
    probs[42:60] = 0.8
    probs[100:104] = 0.9     # 0.128 s: shorter than min_speech, dropped
    probs[150:170] = 0.6
    probs[170:175] = 0.4     # between the two thresholds: still speech
    spans = speech_spans(probs, 200 * 512, pad=0.0)
    assert len(spans) == 2
    assert spans[0] == pytest.approx((10 * step, 60 * step), abs=1e-6)
    assert spans[1] == pytest.approx((150 * step, 175 * step), abs=1e-6)


def test_chunks_hold_at_most_thirty_seconds_of_speech_without_the_silence():
    speech = [(0.0, 10.0), (40.0, 55.0), (100.0, 110.0), (200.0, 275.0)]
    chunks = chunk_spans(0, speech)
    assert all(c.seconds <= 30.0 + 1e-9 for c in chunks)
    assert chunks[0].pieces == ((0.0, 10.0), (40.0, 55.0))  # 25 s of speech, the 30 s gap left out
    assert chunks[1].parts == ((100.0, 110.0),)
    assert [(c.start, c.end) for c in chunks[2:]] == [(200.0, 230.0), (230.0, 260.0), (260.0, 275.0)]
    assert sum(c.seconds for c in chunks) == pytest.approx(sum(e - s for s, e in speech))


def _long_file(n_clips: int = 3):
    """Real clips with 4 s of silence before and 3 s of noise after each; their true spans."""
    from mlx_bald.data.librivox import load_librivox

    rng = np.random.default_rng(0)
    clips = load_librivox()[:n_clips]
    parts, truth, t = [], [], 0.0
    for c in clips:
        parts += [np.zeros(4 * 16_000, np.float32), c.audio.astype(np.float32),
                  (0.01 * rng.standard_normal(3 * 16_000)).astype(np.float32)]
        truth.append((t + 4, t + 4 + c.seconds))
        t += 4 + c.seconds + 3
    return np.concatenate(parts), truth, clips


@pytest.mark.slow
def test_vad_finds_the_real_speech_between_silence_and_noise():
    from mlx_bald.vad import speech_probabilities

    audio, truth, _ = _long_file()
    spans = speech_spans(speech_probabilities(audio), len(audio))
    for start, end in truth:  # every utterance is covered, give or take 0.3 s at its edges
        inside = [s for s in spans if s[1] > start and s[0] < end]
        assert inside and inside[0][0] <= start + 0.3 and inside[-1][1] >= end - 0.3
    speech = sum(e - s for s, e in spans)
    assert speech <= sum(e - s for s, e in truth) + 1.5  # the silence and the noise are left out


@pytest.mark.slow
def test_batch_of_three_equals_one_by_one_on_real_speech():
    from mlx_bald.batched import transcribe_many
    from mlx_bald.data.librivox import load_librivox
    from mlx_bald.evaluate import corpus_wer

    clips = load_librivox()[:3]
    audios = [c.audio for c in clips]
    together = transcribe_many(audios, "whisper-tiny.en", batch_size=3)
    alone = transcribe_many(audios, "whisper-tiny.en", batch_size=1)
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    wer, _ = corpus_wer([c.text for c in clips], [r["text"] for r in together], "en")
    assert wer < 15.0
    seg = together[0]["segments"][0]
    assert seg["start"] == 0.0 and seg["end"] == pytest.approx(clips[0].seconds, abs=0.01)


@pytest.mark.slow
def test_transcribe_vad_end_to_end(tmp_path):
    import soundfile as sf

    from conftest import run_cli
    from mlx_bald.evaluate import corpus_wer

    audio, truth, clips = _long_file(2)
    sf.write(tmp_path / "long.wav", audio, 16_000)
    out = run_cli("transcribe", str(tmp_path / "long.wav"), "--model", "whisper-tiny.en", "--vad",
                  "-f", "srt", "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    srt = (tmp_path / "out" / "long.srt").read_text()
    text = " ".join(line for line in srt.splitlines() if line and not line[0].isdigit())
    wer, _ = corpus_wer([" ".join(c.text for c in clips)], [text], "en")
    assert wer < 20.0
    assert srt.startswith("1\n00:00:0")  # the first segment starts where the speech does, not at 0
    assert not srt.startswith("1\n00:00:00,000")
