"""A user's own unlabelled audio as a training set: ``folder-<lang>:PATH``.

Every audio file under PATH (recursively) is one clip of language ``<lang>`` with no
transcript. The compression recipes only need audio (hidden states, base's own pseudo-labels),
so e.g. a LibriSpeech download joins the training with ``--train-audio folder-en:/data/LibriSpeech``
or ``--extra-audio folder-en:/data/LibriSpeech``. Never a WER set: it has no references.
"""
from __future__ import annotations

from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.errors import MlxBaldError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus")


def load_folder(lang: str, path: str) -> list[Clip]:
    """Clips of every audio file under ``path`` (sorted), ids = paths relative to it."""
    if not lang or not lang.isalpha():
        raise MlxBaldError(f"a folder set names its language: 'folder-en:/path/to/audio' (got language {lang!r})")
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise MlxBaldError(f"folder-{lang}: {path!r} is not a folder of audio files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise MlxBaldError(f"folder-{lang}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    return [Clip(id=str(p.relative_to(root).with_suffix("")), path=p, text="", language=lang, group=p.parent.name)
            for p in files]
