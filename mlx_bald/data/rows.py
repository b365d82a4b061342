"""Rows of labelled data (a manifest line, a dataset row) checked and turned into clips.

Shared by every source a user brings (manifests, audiofolders, Hugging Face datasets): which
column holds what, and the checks that make bad input fail before any model work, each naming
the file, the row and the problem.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from mlx_bald.data.languages import language_code
from mlx_bald.errors import MlxBaldError

TEXT_COLUMNS = ("text", "sentence", "transcription")
LANGUAGE_COLUMNS = ("language", "locale")
GROUP_COLUMNS = ("group", "speaker", "speaker_id", "client_id")
_FFMPEG_ONLY = (".m4a", ".mp4", ".aac", ".wma", ".webm", ".amr")  # libsndfile cannot read their headers


@dataclass(frozen=True)
class Columns:
    """What the user says about their data; None means the conventional default."""
    audio: str | None = None  # default "audio" ("file_name" in an audiofolder's metadata)
    text: str | None = None  # default: the first of text / sentence / transcription
    language: str | None = None  # the language of rows without one (no column, or an empty cell)


@dataclass(frozen=True)
class Layout:
    """The column names one file or dataset actually uses."""
    audio: str
    text: str
    language: str | None
    group: str | None
    default_language: str | None


def _pick(names: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, flag: str,
          where: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise MlxBaldError(f"{where}: no column {wanted!r} (columns: {', '.join(names) or 'none'})")
        return wanted
    found = next((n for n in defaults if n in names), None)
    if found is None:
        raise MlxBaldError(f"{where}: no {what} column (looked for {', '.join(map(repr, defaults))}; "
                           f"columns: {', '.join(names) or 'none'}): name it with {flag}")
    return found


def layout_of(names: Iterable[str], columns: Columns, where: str,
              audio_defaults: tuple[str, ...] = ("audio",)) -> Layout:
    """Resolve the columns of a file/dataset whose column names are ``names``."""
    names = list(names)
    audio = _pick(names, columns.audio, audio_defaults, "audio", "--audio-column", where)
    text = _pick(names, columns.text, TEXT_COLUMNS, "transcript", "--text-column", where)
    lang_col = next((n for n in LANGUAGE_COLUMNS if n in names), None)
    default = None
    if columns.language is not None:
        default = language_code(columns.language)
        if default is None:
            raise MlxBaldError(f"--language {columns.language!r}: unknown language (use a Whisper code "
                               "such as en or cs, or its name)")
    elif lang_col is None:
        raise MlxBaldError(f"{where}: no language column ({' or '.join(LANGUAGE_COLUMNS)}): "
                           "pass --language CODE (e.g. --language en) or add a 'language' column")
    group = next((n for n in GROUP_COLUMNS if n in names), None)
    return Layout(audio, text, lang_col, group, default)


def _cell(row: Mapping, column: str, where: str) -> str:
    if column not in row or row[column] is None:
        raise MlxBaldError(f"{where}: missing {column!r}")
    value = row[column]
    return value if isinstance(value, str) else str(value)


def row_audio(row: Mapping, layout: Layout, where: str) -> str:
    value = _cell(row, layout.audio, where).strip()
    if not value:
        raise MlxBaldError(f"{where}: no audio file named ({layout.audio!r} is empty)")
    return value


def row_text(row: Mapping, layout: Layout, where: str) -> str:
    text = " ".join(_cell(row, layout.text, where).split())
    if not text:
        raise MlxBaldError(f"{where}: empty transcript ({layout.text!r})")
    return text


def row_language(row: Mapping, layout: Layout, where: str) -> str:
    value = row.get(layout.language) if layout.language else None
    value = "" if value is None else str(value).strip()
    if not value:
        if layout.default_language is None:
            raise MlxBaldError(f"{where}: no language ({layout.language!r} is empty): fill it in or pass --language")
        return layout.default_language
    code = language_code(value)
    if code is None:
        raise MlxBaldError(f"{where}: unknown language {value!r} (use a Whisper code such as en or cs, or its name)")
    return code


def row_group(row: Mapping, layout: Layout, fallback: str) -> str:
    value = row.get(layout.group) if layout.group else None
    return fallback if value in (None, "") else str(value)


def check_audio(source: Path | bytes, where: str) -> None:
    """A cheap check that ``source`` is audio: the file exists and its header reads (no decoding)."""
    import soundfile as sf

    if isinstance(source, Path):
        if not source.is_file():
            raise MlxBaldError(f"{where}: audio file {str(source)!r} not found")
        if source.stat().st_size == 0:
            raise MlxBaldError(f"{where}: audio file {str(source)!r} is empty")
    label = "the audio bytes" if isinstance(source, bytes) else f"audio file {str(source)!r}"
    try:
        frames = sf.info(io.BytesIO(source) if isinstance(source, bytes) else str(source)).frames
    except Exception as e:  # libsndfile: not audio, or a format only ffmpeg reads
        if isinstance(source, Path) and source.suffix.lower() in _FFMPEG_ONLY and _ffmpeg():
            return  # decoded later through ffmpeg; a failure then is an AudioError
        raise MlxBaldError(f"{where}: {label} is not readable audio ({str(e).splitlines()[0][:100]})") from e
    if frames == 0:
        raise MlxBaldError(f"{where}: {label} has no audio samples")


def _ffmpeg() -> bool:
    import shutil

    return shutil.which("ffmpeg") is not None


def check_unique(ids: list[str], rows: list[int], where: str) -> None:
    """Clip ids are the rows' audio: two rows with the same audio are an error."""
    first: dict[str, int] = {}
    for clip_id, n in zip(ids, rows):
        if clip_id in first:
            raise MlxBaldError(f"{where}, row {n}: the same audio as row {first[clip_id]} ({clip_id!r})")
        first[clip_id] = n
