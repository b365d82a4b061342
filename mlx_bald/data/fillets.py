"""Fish Fillets NG voice packs (Debian ``fillets-ng-data-<lang>``, GPL-2): voice-acted game
dialogue with the line's text as reference, for any language Debian packs.

Audio: ``sound/<level>/<lang>/<id>.ogg`` in the voice pack. Text: ``script/<level>/*dialogs_<lang>.lua``
in ``fillets-ng-data``, where ``dialogId("<id>", "<font>", "<English original>")`` is followed by
``dialogStr("<text in lang>")``. The reference is the dialogStr; the English original is kept as
``Clip.translation``.

Splits are by LEVEL, never by clip, so no line of a test level is seen in training. The rule
is fixed here and language-independent: sha1(level) % 10 == 0 -> test, == 1 -> dev, else train.
"""
from __future__ import annotations

import re
from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.data.splits import check_split, split_of
from mlx_bald.errors import MlxBaldError
from mlx_bald.fetch import apt_fetch, check_debian_language, extract_deb
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import data_dir

_ROOT = "usr/share/games/fillets-ng/"
_PAIR = re.compile(
    r'dialogId\(\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*"((?:[^"\\]|\\.)*)"\s*\)\s*'
    r'dialogStr\(\s*"((?:[^"\\]|\\.)*)"\s*\)', re.S)


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s).strip()


def fillets_dir(lang: str) -> Path:
    if not re.fullmatch(r"[a-z]{2}(_[A-Z]{2})?", lang):
        raise MlxBaldError(f"bad language code {lang!r} (expected e.g. 'cs')")
    out = data_dir() / f"fillets-{lang}"
    if (out / "script").exists() and (out / "sound").exists():
        return out
    check_debian_language("fillets-<lang> (Fish Fillets voice packs)", "fillets-ng-data-", lang)
    with atomic_dir(out, overwrite=True) as tmp:
        extract_deb(apt_fetch("fillets-ng-data"), tmp / "x", _ROOT + "script/")
        extract_deb(apt_fetch(f"fillets-ng-data-{lang}"), tmp / "x", _ROOT + "sound/")
        (tmp / "x" / _ROOT / "script").rename(tmp / "script")
        (tmp / "x" / _ROOT / "sound").rename(tmp / "sound")
        import shutil
        shutil.rmtree(tmp / "x")
    return out


def _has_samples(path: Path) -> bool:
    """Header check (no decoding): the Dutch pack holds a few OGG files with 0 frames."""
    import soundfile as sf

    try:
        return sf.info(str(path)).frames > 0
    except RuntimeError:
        return False


def load_fillets(lang: str, split: str | None = None) -> list[Clip]:
    """All clips with both audio and a ``lang`` transcript, optionally one split, sorted by id."""
    check_split(split)
    root = fillets_dir(lang)
    clips: list[Clip] = []
    for script in sorted((root / "script").glob(f"*/*dialogs_{lang}.lua")):
        level = script.parent.name
        if split is not None and split_of(level) != split:
            continue
        text = script.read_text(encoding="utf-8", errors="replace")
        for clip_id, english, local in _PAIR.findall(text):
            audio = root / "sound" / level / lang / f"{clip_id}.ogg"
            if audio.exists() and _unescape(local) and _has_samples(audio):
                clips.append(Clip(id=f"{level}/{clip_id}", path=audio, text=_unescape(local),
                                  language=lang, group=level, translation=_unescape(english)))
    return sorted(clips, key=lambda c: c.id)
