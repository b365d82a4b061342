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


def _registered(short_context_s: float, registers: int = 2):
    import mlx.core as mx

    dims = tiny_dims(n_audio_ctx=1500, n_mels=80, n_vocab=51865, n_text_ctx=64)
    model = random_model(dims, CompressionSpec(short_context_s=short_context_s, short_context_registers=registers))
    model.encoder.short_registers = 0.1 * mx.random.normal(model.encoder.short_registers.shape)
    return model


def test_frames_for_runs_the_padded_window_on_the_bucket_in_this_thread_only():
    import threading

    import mlx.core as mx

    from mlx_bald.short_context import active_frames, frames_for

    model = _registered(6.0)
    mel = mx.random.normal((1, 3000, 80))
    full = model.encoder(mel)
    with frames_for(model, int(3.1 * SR)) as frames:
        assert frames == 400
        inside = model.encoder(mel)
        seen = []
        t = threading.Thread(target=lambda: seen.append(active_frames(model.encoder)))
        t.start()
        t.join()
    assert seen == [None]  # another thread (another server request) keeps its own setting
    assert inside.shape == (1, 200 + 2, 64)  # the bucket's positions, then the registers
    np.testing.assert_allclose(np.array(inside), np.array(model.encoder(mel[:, :400], short=True)), atol=1e-5)
    assert model.encoder(mel).shape == full.shape == (1, 1500, 64)  # closed: full windows again
    with frames_for(model, [int(2.5 * SR), int(7 * SR)]) as frames:  # one chunk of the batch is too long
        assert frames is None
    with frames_for(model, int(3.1 * SR), force=False) as frames:
        assert frames is None
    with pytest.raises(MlxBaldError, match="not tuned"):
        with frames_for(_model(None), int(3.1 * SR), force=True):
            pass


def test_transcription_uses_the_short_context_where_it_holds(monkeypatch):
    from mlx_bald import transcribe as transcribe_module
    from mlx_bald.batched import transcribe_many
    from mlx_bald.models.whisper import AudioEncoder

    model = _registered(6.0)
    monkeypatch.setattr(transcribe_module, "get_model", lambda *a, **k: model)
    widths = []
    real = AudioEncoder.__call__

    def spy(self, mel, short=False):
        out = real(self, mel, short)
        widths.append(out.shape[1])
        return out

    monkeypatch.setattr(AudioEncoder, "__call__", spy)
    rng = np.random.default_rng(1)
    short, long = (0.1 * rng.standard_normal(int(s * SR)).astype(np.float32) for s in (3.1, 7.0))
    options = dict(language="en", temperature=0.0, fp16=False, condition_on_previous_text=False)
    transcribe_module.transcribe(short, model="tiny", **options)
    assert widths and set(widths) == {202}
    widths.clear()
    transcribe_module.transcribe(long, model="tiny", **options)
    assert widths and set(widths) == {1500}
    widths.clear()
    transcribe_module.transcribe(short, model="tiny", short_context=False, **options)
    assert set(widths) == {1500}
    with pytest.raises(MlxBaldError, match="up to 6 s"):
        transcribe_module.transcribe(long, model="tiny", short_context=True, **options)
    widths.clear()
    transcribe_many([short, short[:SR]], model="tiny", batch_size=2, temperature=0.0, language="en")
    assert widths and set(widths) == {202}  # the batch runs on the bucket of its longest clip
    widths.clear()
    transcribe_many([short], model="tiny", batch_size=1, temperature=0.0)  # the language detected first
    assert widths and set(widths) == {202}


def test_cli_refuses_a_forced_short_context_on_an_untuned_model_before_decoding():
    from conftest import run_cli

    r = run_cli("transcribe", "--example", "--model", "whisper-base", "--short-context", "on")
    assert r.returncode == 2 and "not tuned for a short audio context" in r.stderr
    assert "files transcribed" not in r.stderr and not r.stdout.strip()
