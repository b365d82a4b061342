"""Transcription with MLX: mlx-bald models behind mlx-whisper's own transcribe (decoding,
temperature fallback, timestamps, word timings are all mlx-whisper's, unchanged)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx

from mlx_bald.audio import load_audio
from mlx_bald.hub import resolve_model

_models: dict[str, Any] = {}
_lock = threading.Lock()


def default_dtype() -> mx.Dtype:
    """fp16 where it is fast (Metal/CUDA); fp32 on CPU, where fp16 is slower (MLX_LINUX.md)."""
    return mx.float16 if (mx.metal.is_available() or mx.cuda.is_available()) else mx.float32


def get_model(name_or_path: str | Path | None = None, dtype: mx.Dtype | None = None):
    """Resolve and load a model once; later calls return the same object."""
    from mlx_bald.load import load_model

    folder = resolve_model(name_or_path, "mlx")
    dtype = dtype or default_dtype()
    key = f"{folder.resolve()}|{dtype}"
    with _lock:
        if key not in _models:
            _models[key] = load_model(folder, dtype=dtype)
        return _models[key]


def transcribe(audio: str | Path | bytes | np.ndarray, model: str | Path | None = None,
               **options: Any) -> dict:
    """Transcribe with mlx-whisper's pipeline on an mlx-bald model.

    ``audio``: a path, file bytes, or 16 kHz mono float32 samples. ``options`` are
    mlx_whisper.transcribe's (language, task, temperature, word_timestamps, initial_prompt,
    verbose, ...). Returns mlx-whisper's result dict (text, segments, language)."""
    import mlx_whisper
    from mlx_whisper.transcribe import ModelHolder

    samples = audio if isinstance(audio, np.ndarray) else load_audio(audio)
    dtype = options.pop("dtype", None) or default_dtype()
    m = get_model(model, dtype)
    options.setdefault("fp16", dtype == mx.float16)
    key = f"mlx-bald:{id(m)}"
    with _lock:  # mlx-whisper keeps one global model slot: hand it ours, no reload, no fork
        ModelHolder.model, ModelHolder.model_path = m, key
        return mlx_whisper.transcribe(samples.astype(np.float32), path_or_hf_repo=key, **options)
