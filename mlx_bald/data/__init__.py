"""Speech sets by one spec string (``load_set``).

Built in: ``librivox``, ``fillets-<lang>[:split]`` and ``asterisk-<lang>[:split]``, real speech;
``tts-en[:split]`` and ``synth-en:N`` (N 30 s windows of several voices and registers),
synthetic English for distillation only; ``pack:SPEC``, any set's short clips packed into 30 s
windows; ``folder-<lang>:PATH``, a user's own unlabelled audio, for training only. A user's labelled data: a manifest (``.jsonl``/``.csv``), an
audiofolder (``PATH[:split]``), a ``save_to_disk`` folder (``PATH[:split]``) or a hub dataset
(``hf:NAME[:CONFIG]:SPLIT``)."""
from __future__ import annotations

from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.data.rows import Columns
from mlx_bald.errors import MlxBaldError

SET_FORMS = ("librivox, fillets-<lang>[:train|dev|test], asterisk-<lang>[:train|dev|test], a manifest "
             "(PATH.jsonl or PATH.csv), an audiofolder or save_to_disk folder (PATH[:split]), "
             "hf:NAME[:CONFIG]:SPLIT (Hugging Face hub, needs internet), tts-en[:split] or synth-en:N "
             "(synthetic, for training), pack:SPEC (SPEC's clips packed into 30 s windows) or "
             "folder-<lang>:PATH (your unlabelled audio, for training)")


def load_set(spec: str, *, audio_column: str | None = None, text_column: str | None = None,
             language: str | None = None) -> list[Clip]:
    """The clips of ``spec`` (see the module doc). The keyword options apply to a user's data
    (manifests and datasets) and are ignored by the built-in sets: ``audio_column`` and
    ``text_column`` name the columns when they are not the conventional ones, ``language`` is the
    language of rows that have none (no ``language``/``locale`` column, or an empty cell)."""
    columns = Columns(audio_column, text_column, language)
    if spec.startswith("hf:"):
        from mlx_bald.data.hf import load_hub

        return load_hub(spec.removeprefix("hf:"), columns)
    if spec.startswith("pack:"):  # training windows of short clips
        from mlx_bald.data.windows import load_packed

        inner = spec.removeprefix("pack:")
        return load_packed(inner, load_set(inner))
    name, _, split = spec.partition(":")
    if name == "synth-en":
        from mlx_bald.data.windows import load_synth

        if not split.isdigit():
            raise MlxBaldError(f"synth-en needs a window count: synth-en:N (e.g. synth-en:1000), not {spec!r}")
        return load_synth(int(split))
    if name == "librivox":
        from mlx_bald.data.librivox import load_librivox

        if split not in ("", "test", "all"):
            raise MlxBaldError("librivox has one split (5 clips): use 'librivox'")
        return load_librivox()
    if name.startswith("fillets-"):
        from mlx_bald.data.fillets import load_fillets

        return load_fillets(name.removeprefix("fillets-"), split or None)
    if name.startswith("asterisk-"):
        from mlx_bald.data.asterisk import load_asterisk

        return load_asterisk(name.removeprefix("asterisk-"), split or None)
    if name.startswith("tts-"):  # synthetic speech: training audio only, never a WER set
        from mlx_bald.data.tts import load_tts

        return load_tts(name.removeprefix("tts-"), split or None)
    if name.startswith("folder-"):  # unlabelled audio: training only
        from mlx_bald.data.folder import load_folder

        return load_folder(name.removeprefix("folder-"), split)
    return _load_path(spec, columns)


def cache_key(spec: str) -> str:
    """The name under which a set's per-clip caches (encoder states, pseudo-labels) are kept:
    the spec itself, except that ``synth-en:N`` for every N shares ``synth-en`` (window i is the
    same window in every N)."""
    return "synth-en" if spec.partition(":")[0] == "synth-en" else spec


def _load_path(spec: str, columns: Columns) -> list[Clip]:
    path, split = Path(spec).expanduser(), None
    if not path.exists() and ":" in spec:  # PATH:SPLIT
        head, _, split = spec.rpartition(":")
        path = Path(head).expanduser()
    if not path.exists():
        raise MlxBaldError(f"unknown set {spec!r}: not a built-in set and no such file or folder. Use {SET_FORMS}")
    if path.is_file():
        from mlx_bald.data.manifest import load_manifest

        if split is not None:
            raise MlxBaldError(f"{path}: a manifest has no splits (':{split}'): write one file per split")
        return load_manifest(path, columns)
    from mlx_bald.data.audiofolder import is_audiofolder, load_audiofolder
    from mlx_bald.data.hf import is_saved_dataset, load_saved

    if is_saved_dataset(path):
        return load_saved(path, split, columns)
    if is_audiofolder(path):
        return load_audiofolder(path, split, columns)
    raise MlxBaldError(f"{path}: not an audiofolder (metadata.csv or metadata.jsonl) nor a save_to_disk folder; "
                       "for unlabelled audio use folder-<lang>:PATH")


__all__ = ["Clip", "Columns", "cache_key", "load_set"]
