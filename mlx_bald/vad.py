"""Voice-activity detection with Silero VAD: its ONNX weights come from the ``silero-vad`` wheel
(fetched once into the cache, without its torch dependencies) and run on onnxruntime.

The network reads 512-sample frames (32 ms at 16 kHz), each preceded by the last 64 samples
of the frame before, and carries a recurrent state; it gives a speech probability per frame.
Speech spans open at ``threshold`` and close after ``min_silence`` seconds below
``threshold - 0.15``; spans shorter than ``min_speech`` are dropped, the rest padded by
``pad`` seconds. ``chunk_spans`` then packs them, without the silence between, into chunks of
at most 30 s of speech (as faster-whisper's batched pipeline).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlx_bald.batched import SAMPLE_RATE, WINDOW_SECONDS, Span
from mlx_bald.errors import MlxBaldError

PACKAGE = ("silero-vad", "6.2.3")
WEIGHTS = "silero_vad/data/silero_vad.onnx"
FRAME, CONTEXT = 512, 64  # samples at 16 kHz


def weights_path() -> Path:
    """The ONNX file in the cache, fetched from PyPI on first use."""
    from mlx_bald.fetch import extract_wheel, pip_fetch
    from mlx_bald.fsutil import atomic_dir
    from mlx_bald.paths import models_dir

    out = models_dir() / "silero-vad" / Path(WEIGHTS).name
    if not out.is_file():
        with atomic_dir(out.parent, overwrite=True) as tmp:
            extract_wheel(pip_fetch(*PACKAGE), tmp / "x", WEIGHTS)
            (tmp / "x" / WEIGHTS).rename(tmp / out.name)
            import shutil
            shutil.rmtree(tmp / "x")
    return out


_session = None


def _onnx():
    global _session
    if _session is None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MlxBaldError("--vad needs onnxruntime: pip install 'mlx-bald[vad]'") from None
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = opts.intra_op_num_threads = 1  # a tiny recurrent net: threads only cost
        _session = ort.InferenceSession(str(weights_path()), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
    return _session


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Speech probability of every 32 ms frame of 16 kHz mono audio."""
    session = _onnx()
    n = -(-len(audio) // FRAME)
    padded = np.zeros(n * FRAME + CONTEXT, np.float32)
    padded[CONTEXT: CONTEXT + len(audio)] = audio
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    probs = np.empty(n, np.float32)
    for i in range(n):  # frame i with the 64 samples before it as context
        x = padded[i * FRAME: (i + 1) * FRAME + CONTEXT][None]
        out, state = session.run(None, {"input": x, "state": state, "sr": sr})
        probs[i] = out[0, 0]
    return probs


def speech_spans(probs: np.ndarray, n_samples: int, threshold: float = 0.5, min_speech: float = 0.25,
                 min_silence: float = 0.1, pad: float = 0.03) -> list[tuple[float, float]]:
    """(start, end) seconds of speech from per-frame probabilities (hysteresis, see module doc)."""
    step = FRAME / SAMPLE_RATE
    total = n_samples / SAMPLE_RATE
    spans, start, quiet_since = [], None, None
    for i, p in enumerate(probs):
        t = i * step
        if start is None:
            if p >= threshold:
                start, quiet_since = t, None
        elif p < threshold - 0.15:
            quiet_since = t if quiet_since is None else quiet_since
            if t + step - quiet_since >= min_silence:
                spans.append((start, quiet_since))
                start, quiet_since = None, None
        else:
            quiet_since = None
    if start is not None:
        spans.append((start, total))
    spans = [(max(0.0, s - pad), min(total, e + pad)) for s, e in spans if e - s >= min_speech]
    merged: list[tuple[float, float]] = []
    for s, e in spans:  # padding can make neighbours touch
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


def chunk_spans(item: int, speech: list[tuple[float, float]], max_seconds: float = WINDOW_SECONDS) -> list[Span]:
    """Speech spans packed in order into chunks of at most ``max_seconds`` of speech; the silence
    between them is left out (a chunk's pieces are joined). A longer span is cut."""
    chunks: list[Span] = []
    pieces: list[tuple[float, float]] = []

    def close() -> None:
        if pieces:
            chunks.append(Span(item, pieces[0][0], pieces[-1][1], tuple(pieces)))
            pieces.clear()

    for s, e in speech:
        while e - s > max_seconds:  # one long utterance: whole windows of it
            close()
            chunks.append(Span(item, s, s + max_seconds))
            s += max_seconds
        if sum(b - a for a, b in pieces) + (e - s) > max_seconds:
            close()
        pieces.append((s, e))
    close()
    return chunks


def vad_spans(audios: list[np.ndarray], threshold: float = 0.5) -> list[Span]:
    """Whisper-sized speech chunks of every input (an input without speech has none)."""
    out: list[Span] = []
    for i, audio in enumerate(audios):
        out += chunk_spans(i, speech_spans(speech_probabilities(audio), len(audio), threshold))
    return out
