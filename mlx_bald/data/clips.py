"""A clip of real speech with its reference transcript."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Clip:
    id: str
    path: Path
    text: str  # reference transcript
    language: str  # ISO code, e.g. "en", "cs"
    group: str = ""  # speaker/level/chapter: the unit splits are made of
    translation: str | None = None  # English reference where the set has one
    data: bytes | None = field(default=None, repr=False, compare=False)  # the file's bytes (dataset rows)
    _audio: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def audio(self) -> np.ndarray:
        """16 kHz mono float32, decoded on first use."""
        if self._audio is None:
            from mlx_bald.audio import load_audio

            self._audio = load_audio(self.path) if self.data is None else load_audio(self.data, str(self.path))
        return self._audio

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000
