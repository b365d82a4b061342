"""Speech sets by name: ``librivox`` and ``fillets-<lang>[:split]`` (e.g. ``fillets-cs:test``), real
speech; ``tts-en[:split]``, synthetic English for distillation only; ``folder-<lang>:PATH``, a
user's own unlabelled audio, for training only."""
from __future__ import annotations

from mlx_bald.data.clips import Clip
from mlx_bald.errors import MlxBaldError


def load_set(spec: str) -> list[Clip]:
    name, _, split = spec.partition(":")
    if name == "librivox":
        from mlx_bald.data.librivox import load_librivox

        if split not in ("", "test", "all"):
            raise MlxBaldError("librivox has one split (5 clips): use 'librivox'")
        return load_librivox()
    if name.startswith("fillets-"):
        from mlx_bald.data.fillets import load_fillets

        return load_fillets(name.removeprefix("fillets-"), split or None)
    if name.startswith("tts-"):  # synthetic speech: training audio only, never a WER set
        from mlx_bald.data.tts import load_tts

        return load_tts(name.removeprefix("tts-"), split or None)
    if name.startswith("folder-"):  # unlabelled audio: training only
        from mlx_bald.data.folder import load_folder

        return load_folder(name.removeprefix("folder-"), split)
    raise MlxBaldError(f"unknown set {spec!r}: use 'librivox', 'fillets-<lang>[:train|dev|test]', "
                       "'tts-en[:split]' (synthetic, for training) or 'folder-<lang>:PATH' (your unlabelled audio, "
                       "for training)")


__all__ = ["Clip", "load_set"]
