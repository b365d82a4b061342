"""Short audio context (runtime side): a clip encoded on its own frames,
rounded up to a bucket, instead of a padded 30 s window -- only for a model whose spec says it
was tuned for it (``CompressionSpec.short_context_s``) and only for clips up to that length.

An untuned Whisper run on a short context loops and hallucinates (whisper.cpp's ``audio_ctx``:
WER 4.31 -> 85.34 on long audio), so forcing it on such a model is refused. A tuned model comes
from ``mlx-bald compress --recipe short-context``.

Transcription reaches the encoder through mlx-whisper's decoding, which always hands it a padded
30 s mel; ``frames_for`` opens a context (per thread, per model) in which that encoder runs on
the first frames only.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np

from mlx_bald.errors import MlxBaldError

from mlx_bald.buckets import BUCKET_S, SAMPLE_RATE, bucket_frames  # noqa: F401  (re-exported)


def use_short_context(model, n_samples: int, force: bool | None = None) -> bool:
    """Whether to encode this clip on a short context. ``force``: None, where the model's spec
    allows it; True, required (refused with a clear message where it does not hold); False, never."""
    if force is False:
        return False
    limit = model.spec.short_context_s
    seconds = n_samples / SAMPLE_RATE
    if limit is None:
        if force:
            raise MlxBaldError(
                "this model was not tuned for a short audio context (its spec has no short_context_s): "
                "an untuned Whisper encoded on less than a 30 s window loops and hallucinates. "
                "Leave the short context off, or use a model tuned for it.")
        return False
    if seconds > limit:
        if force:
            raise MlxBaldError(f"the clip is {seconds:.1f} s; this model was tuned for a short context "
                               f"of clips up to {limit:g} s: longer audio is encoded in full 30 s windows")
        return False
    return True


def encode(model, audio: np.ndarray, force: bool | None = None) -> mx.array:
    """Audio features [1, positions, d] of a clip of at most 30 s: on its own frames rounded up
    to a bucket where ``use_short_context``, else on the padded 30 s window."""
    from mlx_whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim

    full = 2 * model.dims.n_audio_ctx
    mel = log_mel_spectrogram(mx.array(audio.astype(np.float32)), n_mels=model.dims.n_mels, padding=N_SAMPLES)
    window = pad_or_trim(mel[:full], full, axis=-2)[None].astype(model.encoder.conv1.weight.dtype)
    with frames_for(model, len(audio), force):
        return model.embed_audio(window)


# id(encoder) -> mel frames it runs a full-window mel on; a ContextVar, so threads do not mix
_ACTIVE: ContextVar[dict[int, int]] = ContextVar("mlx_bald_short_context", default={})


def active_frames(encoder) -> int | None:
    """Frames ``encoder`` should run a full-window mel on, inside ``frames_for``; else None."""
    return _ACTIVE.get().get(id(encoder))


@contextmanager
def frames_for(model, n_samples: int | Sequence[int], force: bool | None = None) -> Iterator[int | None]:
    """While open, ``model``'s encoder runs the padded 30 s mels it is given on the bucket of the
    longest of ``n_samples`` (one clip or a batch's), if ``use_short_context`` holds for every
    one of them (else full windows, or a refusal where ``force``). Yields the frames, or None."""
    target = getattr(model, "target", model)  # a speculative pair: the target's encoder
    lengths = [n_samples] if isinstance(n_samples, int) else list(n_samples)
    full = 2 * target.dims.n_audio_ctx
    short = bool(lengths) and all([use_short_context(target, n, force) for n in lengths])
    frames = max(bucket_frames(n, full) for n in lengths) if short else None
    if frames is None or frames >= full:
        yield None
        return
    token = _ACTIVE.set({**_ACTIVE.get(), id(target.encoder): frames})
    try:
        yield frames
    finally:
        _ACTIVE.reset(token)
