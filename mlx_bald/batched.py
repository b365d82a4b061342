"""Batched transcription: the chunks of many inputs (30 s windows, or VAD speech chunks)
decoded B at a time through one kv cache, as faster-whisper's BatchedInferencePipeline does.

Each chunk is independent (no previous-text conditioning) and decoded without timestamp tokens;
it becomes one segment with the chunk's own start and end. A chunk whose text fails
mlx-whisper's checks (too repetitive, too unlikely) is re-decoded alone at the fallback
temperatures; a chunk that is silence by the same rules gives no segment. So batch 1 and
batch 8 give the same texts: only how many chunks share a decoder pass changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # mlx-whisper's transcribe defaults
# the mlx-whisper decoding options transcribe_many takes (the others need the one-by-one decoder)
OPTIONS = ("language", "task", "temperature", "initial_prompt", "compression_ratio_threshold",
           "logprob_threshold", "no_speech_threshold", "beam_size", "patience", "length_penalty",
           "draft_model", "short_context")


@dataclass(frozen=True)
class Span:
    """A chunk of input ``item`` from ``start`` to ``end`` seconds; with ``pieces``, only those
    (start, end) parts of it, joined (speech without the silences between)."""
    item: int
    start: float
    end: float
    pieces: tuple[tuple[float, float], ...] = ()

    @property
    def parts(self) -> tuple[tuple[float, float], ...]:
        return self.pieces or ((self.start, self.end),)

    @property
    def seconds(self) -> float:
        return sum(e - s for s, e in self.parts)


def window_spans(item: int, n_samples: int) -> list[Span]:
    """Consecutive 30 s windows covering an input (the last one shorter)."""
    total = n_samples / SAMPLE_RATE
    starts = np.arange(0.0, max(total, 1e-9), WINDOW_SECONDS)
    return [Span(item, float(s), float(min(s + WINDOW_SECONDS, total))) for s in starts]


def _mel(audio: np.ndarray, span: Span, n_mels: int, dtype: mx.Dtype) -> mx.array:
    from mlx_whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim

    piece = np.concatenate([audio[int(round(s * SAMPLE_RATE)): int(round(e * SAMPLE_RATE))] for s, e in span.parts])
    mel = log_mel_spectrogram(pad_or_trim(mx.array(piece.astype(np.float32)), N_SAMPLES), n_mels=n_mels)
    return mel.astype(dtype)


def transcribe_many(audios: Sequence[np.ndarray], model=None, batch_size: int = 8,
                    spans: Sequence[Span] | None = None, language: str | None = None,
                    task: str = "transcribe", beam_size: int | None = None, patience: float | None = None,
                    length_penalty: float | None = None,
                    temperature: float | Sequence[float] = FALLBACK_TEMPERATURES,
                    compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
                    no_speech_threshold: float | None = 0.6, initial_prompt: str | None = None,
                    on_segment: Callable[[int, dict], None] | None = None,
                    dtype: mx.Dtype | None = None, draft_model: str | None = None,
                    short_context: bool | None = None) -> list[dict]:
    """mlx-whisper-shaped results (text, segments, language), one per input.

    ``audios``: 16 kHz mono float32 arrays. ``spans``: the chunks to decode (e.g. from
    ``mlx_bald.vad.speech_spans``), each at most 30 s; default: 30 s windows of every input.
    ``on_segment(item, segment)`` is called as each chunk's segment is ready (input order
    within an item), for streaming. ``draft_model``: speculative decoding, which applies to
    batches of one chunk (``batch_size=1``); larger batches decode without it (said once).
    ``short_context``: as ``mlx_bald.transcribe.transcribe``'s, per batch of chunks (a batch whose
    chunks all fit the model's tuned length runs on the bucket of its longest)."""
    from mlx_whisper.decoding import DecodingOptions

    from mlx_bald.short_context import frames_for
    from mlx_bald.transcribe import default_dtype, get_model

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    dtype = dtype or default_dtype()
    m = get_model(model, dtype, draft=draft_model)
    if not m.is_multilingual:
        language = "en"  # an English-only model has no language tokens to detect
    if spans is None:
        spans = [s for i, a in enumerate(audios) for s in window_spans(i, len(a))]
    spans = sorted(spans, key=lambda s: (s.item, s.start))
    if any(s.seconds > WINDOW_SECONDS + 1e-6 for s in spans):
        raise ValueError("a span is longer than Whisper's 30 s window")
    temps = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    base = DecodingOptions(language=language, task=task, without_timestamps=True,
                           fp16=dtype == mx.float16, prompt=initial_prompt, temperature=temps[0],
                           beam_size=beam_size if temps[0] == 0 else None,
                           patience=patience if temps[0] == 0 else None, length_penalty=length_penalty)
    segments: list[list[dict]] = [[] for _ in audios]
    languages: list[str | None] = [language] * len(audios)
    for first in range(0, len(spans), batch_size):
        group = spans[first: first + batch_size]
        mels = [_mel(audios[s.item], s, m.dims.n_mels, dtype) for s in group]
        with frames_for(m, [int(round(s.seconds * SAMPLE_RATE)) for s in group], short_context):
            results = m.decode(mx.stack(mels), base)
            results = [_with_fallback(m, mel, r, base, temps, compression_ratio_threshold, logprob_threshold,
                                      no_speech_threshold) for mel, r in zip(mels, results)]
        for span, result in zip(group, results):
            if languages[span.item] is None:
                languages[span.item] = result.language
            if _silent(result, logprob_threshold, no_speech_threshold) or not result.text.strip():
                continue
            seg = {"id": len(segments[span.item]), "seek": int(round(span.start * 100)),
                   "start": round(span.start, 3), "end": round(span.end, 3), "text": " " + result.text.strip(),
                   "tokens": list(result.tokens), "temperature": result.temperature,
                   "avg_logprob": result.avg_logprob, "compression_ratio": result.compression_ratio,
                   "no_speech_prob": result.no_speech_prob}
            segments[span.item].append(seg)
            if on_segment is not None:
                on_segment(span.item, seg)
    return [{"text": "".join(s["text"] for s in segs), "segments": segs, "language": lang or "en"}
            for segs, lang in zip(segments, languages)]


def _needs_fallback(result, compression_ratio_threshold, logprob_threshold, no_speech_threshold) -> bool:
    if no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold:
        return False  # silence: no point sampling it again
    return bool((compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold)
                or (logprob_threshold is not None and result.avg_logprob < logprob_threshold))


def _silent(result, logprob_threshold, no_speech_threshold) -> bool:
    return (no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold
            and (logprob_threshold is None or result.avg_logprob < logprob_threshold))


def _with_fallback(model, mel, result, base, temps, crt, lpt, nst):
    """mlx-whisper's rule: re-decode alone at the next temperature until the text passes."""
    from dataclasses import replace

    for t in temps[1:]:
        if not _needs_fallback(result, crt, lpt, nst):
            break
        mx.random.seed(0)  # sampled the same way in any batch and any run
        result = model.decode(mel, replace(base, temperature=t, beam_size=None, patience=None))
    return result
