"""Synthetic English speech, for distillation only (never for WER): the English original of
every Fish Fillets line (``Clip.translation`` of ``fillets-<lang>``), spoken by espeak-ng.

Why: a general-purpose student distilled on Czech audio alone forgets base's English, and the
registries hold no English speech corpus (LibriVox's 5 clips are the English TEST set). The
student learns base's own transcripts of this audio (pseudo-labels), so the robotic voice only
has to make base behave as it does on English, not be perfect speech.

espeak-ng comes from PyPI's ``espeakng-loader`` (the library and its voice data, no system
install). Lines rotate over a fixed set of voices and speaking rates (deterministic per id);
the audio is cached as 16 kHz wav under ``data_dir()/tts-en``, atomically, one file per line.
Splits follow the source lines' levels, so ``tts-en:train`` shares no text with the test levels.
"""
from __future__ import annotations

import ctypes
import threading
import zlib
from pathlib import Path

import numpy as np

from mlx_bald.data.clips import Clip
from mlx_bald.errors import MlxBaldError
from mlx_bald.paths import data_dir

VOICES = ("en-us", "en", "en-gb-x-rp", "en-us+m3", "en+f2", "en-us+f4", "en+m7", "en-gb-scotland")
RATES = (145, 160, 175, 190)  # words per minute
SOURCE_LANG = "cs"  # whose fillets script supplies the English lines (the Czech pack is always fetched)
_lock = threading.Lock()


class _Espeak:
    """Synchronous espeak-ng through ctypes: text -> float32 samples at ``self.rate``."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise MlxBaldError("synthetic English needs espeak-ng: pip install espeakng-loader "
                               "(part of mlx-bald[compress])") from e
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(self._collect)  # kept alive: espeak holds the pointer
        self.rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2: synchronous
        if self.rate <= 0:
            raise MlxBaldError("espeak-ng failed to initialise")
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, voice: str, wpm: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise MlxBaldError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, wpm, 0)  # 1: espeakRATE
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 1, None, None)  # 1: espeakCHARS_UTF8
        self.lib.espeak_Synchronize()
        if not self._chunks:
            raise MlxBaldError(f"espeak-ng produced no audio for {text[:40]!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


_engine: _Espeak | None = None


def voice_of(clip_id: str) -> tuple[str, int]:
    h = zlib.crc32(clip_id.encode())
    return VOICES[h % len(VOICES)], RATES[(h // len(VOICES)) % len(RATES)]


def synthesize(text: str, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, 16 kHz mono float32."""
    global _engine
    from mlx_bald.audio import resample

    with _lock:  # espeak-ng keeps global state
        if _engine is None:
            _engine = _Espeak()
        audio = _engine.say(text, voice, wpm)
        return resample(audio, _engine.rate)


def load_tts(lang: str = "en", split: str | None = None) -> list[Clip]:
    """Synthetic clips of the English lines of ``fillets-cs`` (``split`` by level), each with its
    text as reference; wav files are made on first use."""
    if lang != "en":
        raise MlxBaldError(f"synthetic speech is English only (got {lang!r}); use 'tts-en'")
    from mlx_bald.data.fillets import load_fillets

    root = data_dir() / "tts-en"
    clips, seen = [], set()
    for src in load_fillets(SOURCE_LANG, split):
        text = (src.translation or "").strip()
        if not text or text in seen or not any(ch.isalpha() for ch in text):
            continue
        seen.add(text)
        clips.append(Clip(id=f"tts-en/{src.id}", path=root / f"{src.id}.wav", text=text, language="en",
                          group=src.group))
    ensure_audio(clips)
    return clips


def ensure_audio(clips: list[Clip], progress: bool = True) -> None:
    """Synthesise the wav of every clip that has none yet (atomic per file)."""
    import soundfile as sf
    from tqdm.auto import tqdm

    todo = [c for c in clips if not Path(c.path).is_file()]
    for c in tqdm(todo, desc="synthetic English", disable=not progress or not todo):
        voice, wpm = voice_of(c.id.removeprefix("tts-en/"))
        audio = synthesize(c.text, voice, wpm)
        path = Path(c.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        sf.write(str(tmp), audio, 16_000, format="WAV", subtype="PCM_16")
        tmp.replace(path)
