"""Asterisk's telephony prompts (Debian ``asterisk-core-sounds-<lang>`` + ``-wav``, CC-BY-SA-3.0):
real read speech by one professional speaker per language, 8 kHz, with a transcript per prompt.

Audio: ``usr/share/asterisk/sounds/<voice>/<name>.wav`` of the ``-wav`` package (the voice folder
differs per language: ``en_US_f_Allison``, ``fr_CA_f_June`` ...). Text:
``core-sounds-<lang>.txt[.gz]`` of the other package, one ``name: text`` line per prompt.

Kept: prompts with audio and a spoken transcript. Skipped: non-speech lines (``[beep]``,
``(9 seconds of silence)``), empty ones, and lines whose brackets leave the spoken words unclear
(``IAX (note: does not say "2")``); a bracketed symbol after the word (``at [@]``) is dropped.
A name listed twice keeps its first line. One speaker: the split is by a hash of the prompt
name (``mlx_bald.data.splits``), so test and train share the voice.
"""
from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.data.splits import check_split, split_of
from mlx_bald.errors import MlxBaldError
from mlx_bald.fetch import apt_fetch, check_debian_language, extract_deb
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import data_dir

LICENSE = "CC-BY-SA-3.0"
_LINE = re.compile(r"^([^\s:;][^\s:]*):\s*(.*)$")
_NON_SPEECH = re.compile(r"^(\[.*\]|\(.*\))$")
_SYMBOL_NOTE = re.compile(r"\s*\[[^\w\]]*\]")  # "dot [.]", "space [ ]"


def asterisk_dir(lang: str) -> Path:
    """``<cache>/data/asterisk-<lang>/`` with ``sounds/`` (the voice folder) and the transcript file."""
    if not re.fullmatch(r"[a-z]{2}", lang):
        raise MlxBaldError(f"bad language code {lang!r} (expected e.g. 'en', 'es', 'fr', 'ru')")
    out = data_dir() / f"asterisk-{lang}"
    if (out / "sounds").is_dir() and list(out.glob("core-sounds-*.txt*")):
        return out
    check_debian_language("asterisk-<lang> (Asterisk prompts)", "asterisk-core-sounds-", lang, "-wav")
    with atomic_dir(out, overwrite=True) as tmp:
        x = tmp / "x"
        extract_deb(apt_fetch(f"asterisk-core-sounds-{lang}"), x, "usr/share/doc/")
        extract_deb(apt_fetch(f"asterisk-core-sounds-{lang}-wav"), x, "usr/share/")
        texts = sorted((x / "usr/share/doc").glob(f"*/core-sounds-{lang}.txt*"))
        voices = sorted(p for p in (x / "usr/share/asterisk/sounds").glob("*") if p.is_dir())
        if not texts or len(voices) != 1:
            raise MlxBaldError(f"asterisk-{lang}: unexpected package layout (transcripts {len(texts)}, voices "
                               f"{[v.name for v in voices]})")
        texts[0].rename(tmp / texts[0].name)
        voices[0].rename(tmp / "sounds")
        for licence in (x / "usr/share/doc").glob(f"asterisk-core-sounds-{lang}-wav/copyright"):
            licence.rename(tmp / "copyright")
        shutil.rmtree(x)
    return out


def _read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_prompts(text: str) -> dict[str, str]:
    """``name -> spoken text`` of a core-sounds file, non-speech and unclear lines left out."""
    prompts: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) in prompts:
            continue
        name, said = m.group(1), m.group(2).strip()
        if _NON_SPEECH.match(said):
            prompts[name] = ""  # taken: a later line of the same name does not replace it
            continue
        said = " ".join(_SYMBOL_NOTE.sub("", said).split())
        prompts[name] = "" if re.search(r"[\[\]()]", said) else said
    return {k: v for k, v in prompts.items() if v}


def load_asterisk(lang: str, split: str | None = None) -> list[Clip]:
    """The prompts of ``lang`` with audio and a spoken transcript, optionally one split, sorted by name."""
    check_split(split)
    root = asterisk_dir(lang)
    prompts = parse_prompts(_read_text(next(root.glob("core-sounds-*.txt*"))))
    clips = []
    for name, said in sorted(prompts.items()):
        audio = root / "sounds" / f"{name}.wav"
        if audio.is_file() and (split is None or split_of(name) == split):
            clips.append(Clip(id=name, path=audio, text=said, language=lang, group=name))
    return clips
