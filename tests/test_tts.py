"""Synthetic English (espeak-ng) for the general student's distillation audio."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from mlx_bald.data.tts import RATES, VOICES, synthesize, voice_of  # noqa: E402
from mlx_bald.errors import MlxBaldError  # noqa: E402


def test_synthesize_gives_16k_speech_for_every_voice():
    for voice in VOICES:
        audio = synthesize("Hello there, little fish.", voice, 160)
        assert audio.dtype == np.float32 and 0.8 < len(audio) / 16_000 < 3.0, voice
        assert 0.05 < np.abs(audio).max() <= 1.0
    slow, fast = (len(synthesize("Hello there, little fish.", "en-us", r)) for r in (RATES[0], RATES[-1]))
    assert fast < slow
    with pytest.raises(MlxBaldError, match="no voice"):
        synthesize("hello", "xx-nonexistent", 160)


def test_voice_rotation_is_deterministic():
    picks = {voice_of(f"level/line-{i}") for i in range(200)}
    assert voice_of("level/line-1") == voice_of("level/line-1")
    assert {v for v, _ in picks} == set(VOICES) and {r for _, r in picks} == set(RATES)


def test_wer_refuses_synthetic_speech():
    from mlx_bald.evaluate import evaluate

    with pytest.raises(MlxBaldError, match="synthetic"):
        evaluate("whisper-base", "tts-en:train")


@pytest.mark.slow
def test_tts_set_follows_the_fillets_level_split():
    from mlx_bald.data import load_set

    test, dev = load_set("tts-en:test"), load_set("tts-en:dev")
    assert len(test) > 50 and len(dev) > 50
    assert {c.group for c in test}.isdisjoint({c.group for c in dev})
    assert all(c.id.startswith("tts-en/") and c.language == "en" and c.path.is_file() for c in test + dev)
    assert len({c.text for c in test}) == len(test)  # one clip per distinct line
    assert 0.3 < test[0].seconds < 30
