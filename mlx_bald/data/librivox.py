"""LibriVox English: 5 read-speech clips (Sense and Sensibility, public domain, 16 kHz)
with reference transcripts, shipped in the pocketsphinx 5.1.1 source distribution."""
from __future__ import annotations

from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.fetch import extract_sdist, pip_fetch
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import data_dir

_PACKAGE = ("pocketsphinx", "5.1.1")
_INNER = "test/data/librivox/"


def librivox_dir() -> Path:
    out = data_dir() / "librivox"
    if not any(out.glob("*.wav")):
        archive = pip_fetch(*_PACKAGE, sdist=True)
        with atomic_dir(out, overwrite=True) as tmp:
            extract_sdist(archive, tmp / "x", _INNER)
            for f in (tmp / "x").rglob("*"):
                if f.suffix in (".wav", ".txt") and _INNER in str(f):
                    f.rename(tmp / f.name)
            import shutil
            shutil.rmtree(tmp / "x")
    return out


def load_librivox() -> list[Clip]:
    folder = librivox_dir()
    clips = []
    for wav in sorted(folder.glob("*.wav")):
        text = " ".join(wav.with_suffix(".txt").read_text().split())
        clips.append(Clip(id=wav.stem, path=wav, text=text, language="en", group="sense_and_sensibility"))
    return clips


def example_clip() -> Clip:
    """The clip the README transcribes: 'and mister john dashwood had then leisure ...'."""
    return load_librivox()[0]
