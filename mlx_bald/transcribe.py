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

_models: dict[str, tuple[Any, threading.Thread]] = {}  # key -> (model, the thread that loaded it)
_pairs: dict[tuple[str, str], Any] = {}  # (target key, draft key) -> SpeculativeWhisper
_lock = threading.Lock()


def default_dtype() -> mx.Dtype:
    """fp16 where it is fast (Metal/CUDA); fp32 on CPU, where fp16 is slower (MLX_LINUX.md)."""
    return mx.float16 if (mx.metal.is_available() or mx.cuda.is_available()) else mx.float32


def _key(name_or_path, dtype: mx.Dtype) -> tuple[str, Path]:
    folder = resolve_model(name_or_path, "mlx")
    return f"{folder.resolve()}|{dtype}", folder


def get_model(name_or_path: str | Path | None = None, dtype: mx.Dtype | None = None,
              draft: str | Path | None = None):
    """Resolve and load a model once; later calls return the same object. With ``draft``
    (a model with the same tokenizer): the model wrapped for speculative decoding
    (``mlx_bald.speculative``; same output, the draft's stats in ``.stats``)."""
    from mlx_bald.load import load_model

    dtype = dtype or default_dtype()
    key, folder = _key(name_or_path, dtype)
    with _lock:
        # A model loaded by a thread that has ended fails to decode in another thread
        # ("There is no Stream(cpu, N) in current thread", MLX 0.32: a server stopped, another
        # started in the same process): such a model is loaded again, and its pairs rebuilt.
        if key not in _models or not _models[key][1].is_alive():
            _models[key] = (load_model(folder, dtype=dtype), threading.current_thread())
            for pair in [p for p in _pairs if key in p]:
                del _pairs[pair]
        model = _models[key][0]
    if draft is None:
        return model
    draft_model = get_model(draft, dtype)
    pair = (key, _key(draft, dtype)[0])
    with _lock:
        if pair not in _pairs:
            from mlx_bald.speculative import SpeculativeWhisper
            _pairs[pair] = SpeculativeWhisper(model, draft_model)
        return _pairs[pair]


def transcribe(audio: str | Path | bytes | np.ndarray, model: str | Path | None = None,
               **options: Any) -> dict:
    """Transcribe with mlx-whisper's pipeline on an mlx-bald model.

    ``audio``: a path, file bytes, or 16 kHz mono float32 samples. ``options`` are
    mlx_whisper.transcribe's (language, task, temperature, word_timestamps, initial_prompt,
    verbose, ...), plus ``draft_model``: a cheaper model with the same tokenizer for speculative
    decoding (same result, fewer target passes), and ``short_context``: None (default) encodes a
    clip on its own frames where the model was tuned for it and the clip is short enough
    (``mlx_bald.short_context``), True requires that (refused where it does not hold), False
    never. Returns mlx-whisper's result dict (text, segments, language)."""
    import mlx_whisper
    from mlx_whisper.transcribe import ModelHolder

    from mlx_bald.short_context import frames_for

    samples = audio if isinstance(audio, np.ndarray) else load_audio(audio)
    dtype = options.pop("dtype", None) or default_dtype()
    force = options.pop("short_context", None)
    m = get_model(model, dtype, draft=options.pop("draft_model", None))
    options.setdefault("fp16", dtype == mx.float16)
    key = f"mlx-bald:{id(m)}"
    with _lock, frames_for(m, len(samples), force):
        ModelHolder.model, ModelHolder.model_path = m, key  # mlx-whisper's one model slot: ours, no reload
        return mlx_whisper.transcribe(samples.astype(np.float32), path_or_hf_repo=key, **options)
