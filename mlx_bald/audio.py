"""Audio in: any file libsndfile reads (wav, flac, ogg/opus, mp3) or raw bytes, as 16 kHz
mono float32. ffmpeg (if installed) handles the rest, through mlx-whisper's loader."""
from __future__ import annotations

import io
import shutil
from math import gcd
from pathlib import Path

import numpy as np

from mlx_bald.errors import AudioError

SAMPLE_RATE = 16_000


def resample(audio: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if sr == target:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(sr, target)
    return resample_poly(audio, target // g, sr // g).astype(np.float32)


def load_audio(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (a path or the file's bytes) to 16 kHz mono float32.
    Raises AudioError with a message a user can act on."""
    import soundfile as sf

    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise AudioError(f"{label}: the file is empty")
        handle: object = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{label}: no such file")
        if path.is_dir():
            raise AudioError(f"{label}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label}: the file is empty")
        handle = str(path)
    try:
        data, sr = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile: unknown format, corrupt header
        data = _ffmpeg_fallback(source)
        if data is None:
            raise AudioError(f"{label}: not a readable audio file ({_short(e)})") from e
        sr = SAMPLE_RATE
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise AudioError(f"{label}: contains no audio samples")
    return resample(data, sr)


def _short(e: Exception) -> str:
    import re

    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    msg = re.sub(r"Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ", "", msg)  # no object reprs
    return msg[:120]


def _ffmpeg_fallback(source) -> np.ndarray | None:
    if isinstance(source, bytes) or shutil.which("ffmpeg") is None:
        return None
    try:
        from mlx_whisper.audio import load_audio as ffmpeg_load

        out = ffmpeg_load(str(source))
        return np.asarray(out, dtype=np.float32)
    except Exception:
        return None


def duration(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE
