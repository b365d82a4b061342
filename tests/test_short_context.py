"""Short audio context, runtime side (mlx_bald.short_context): bucketing, the spec field through
config.json and the loader, the encoder on a clip's own frames only where the spec allows,
and refusing a forced short context on an untuned model or an over-long clip."""
from __future__ import annotations

import numpy as np
import pytest
from mlx_whisper.decoding import DecodingOptions

from mlx_bald.decoding import decode
from mlx_bald.errors import MlxBaldError
from mlx_bald.load import load_model, save_model_folder
from mlx_bald.short_context import bucket_frames, encode, use_short_context
from mlx_bald.spec import CompressionSpec, SpecError
from mlx_helpers import random_model, tiny_dims

SR = 16_000


def test_bucketing_rounds_up_to_two_seconds_and_caps_at_the_window():
    assert bucket_frames(int(0.3 * SR)) == 200
    assert bucket_frames(2 * SR) == 200
    assert bucket_frames(2 * SR + 1) == 400
    assert bucket_frames(int(4.5 * SR)) == 600
    assert bucket_frames(int(29.5 * SR)) == 3000
    assert bucket_frames(45 * SR) == 3000
    assert bucket_frames(3 * SR, bucket_s=1.0) == 300


def test_spec_field_round_trips_and_is_checked(tmp_path):
    spec = CompressionSpec(short_context_s=8.0)
    assert not spec.is_identity
    assert CompressionSpec.from_json(spec.to_json()).short_context_s == 8.0
    assert CompressionSpec.from_dict({"embedding_rank": 16}).short_context_s is None
    for bad in (0.0, -1.0, 31.0):
        with pytest.raises(SpecError, match="short_context_s"):
            CompressionSpec(short_context_s=bad).validate()
    dims = tiny_dims()
    folder = save_model_folder(random_model(dims, spec), dims, spec, tmp_path / "m")
    assert load_model(folder).spec.short_context_s == 8.0


def _model(short_context_s: float | None):
    # Whisper's window (1500 positions) and vocabulary, tiny widths
    dims = tiny_dims(n_audio_ctx=1500, n_mels=80, n_vocab=51865, n_text_ctx=64)
    return random_model(dims, CompressionSpec(short_context_s=short_context_s))


def test_untuned_model_keeps_full_windows_and_refuses_a_forced_short_context():
    model = _model(None)
    audio = np.zeros(3 * SR, dtype=np.float32)
    assert not use_short_context(model, len(audio))
    with pytest.raises(MlxBaldError, match="not tuned for a short audio context"):
        use_short_context(model, len(audio), force=True)
    with pytest.raises(MlxBaldError, match="not tuned"):
        encode(model, audio, force=True)
    assert encode(model, audio).shape == (1, 1500, 64)  # the full window


def test_tuned_model_encodes_a_short_clip_on_its_bucket_and_decodes_it():
    model = _model(6.0)
    rng = np.random.default_rng(0)
    short, long = (0.1 * rng.standard_normal(int(s * SR)).astype(np.float32) for s in (3.1, 7.0))
    assert use_short_context(model, len(short)) and not use_short_context(model, len(long))
    assert not use_short_context(model, len(short), force=False)
    with pytest.raises(MlxBaldError, match="tuned for a short context of clips up to 6 s"):
        use_short_context(model, len(long), force=True)
    features = encode(model, short)
    assert features.shape == (1, 200, 64)  # 3.1 s -> a 4 s bucket -> 400 frames -> 200 positions
    assert encode(model, long).shape == (1, 1500, 64)
    options = DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=4)
    first, again = decode(model, features, options)[0], decode(model, features, options)[0]
    assert first.tokens == again.tokens and len(first.tokens) <= 4
