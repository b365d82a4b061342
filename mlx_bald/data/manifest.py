"""A manifest: a ``.jsonl`` or ``.csv`` file, one clip per row, with the columns ``audio`` (a path
relative to the manifest's folder, or absolute), ``text`` (or ``sentence`` / ``transcription``)
and optionally ``language``.

Rows are numbered as a user counts them in the file: the line number (in a CSV the header is
row 1). A clip's id is its audio path as written, relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from mlx_bald.data.clips import Clip
from mlx_bald.data.rows import (Columns, check_audio, check_unique, layout_of, row_audio, row_group, row_language,
                                row_text)
from mlx_bald.errors import MlxBaldError

SUFFIXES = (".jsonl", ".csv")


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(column names in order of first appearance, [(row number, row)]) of a JSONL or CSV file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise MlxBaldError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise MlxBaldError(f"{path}: cannot read ({e.strerror})") from e
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise MlxBaldError(f"{path}, row {reader.line_num}: not valid CSV ({e})") from e
        return list(reader.fieldnames or []), rows
    rows, names = [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MlxBaldError(f"{path}, row {n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise MlxBaldError(f"{path}, row {n}: not a JSON object")
        names.update(dict.fromkeys(row))
        rows.append((n, row))
    return list(names), rows


def clips_from_table(path: Path, base: Path, columns: Columns,
                     audio_defaults: tuple[str, ...] = ("audio",)) -> list[Clip]:
    """Checked clips of every row of ``path``; audio paths are relative to ``base``."""
    names, rows = read_rows(path)
    if not rows:
        raise MlxBaldError(f"{path}: no rows, so no data")
    layout = layout_of(names, columns, str(path), audio_defaults)
    clips, numbers = [], []
    for n, row in rows:
        where = f"{path}, row {n}"
        audio = Path(row_audio(row, layout, where)).expanduser()
        audio = audio if audio.is_absolute() else base / audio
        clip_id = _id_of(audio, base)
        text, language = row_text(row, layout, where), row_language(row, layout, where)
        check_audio(audio, where)
        clips.append(Clip(id=clip_id, path=audio, text=text, language=language,
                          group=row_group(row, layout, Path(clip_id).parent.as_posix().strip("."))))
        numbers.append(n)
    check_unique([c.id for c in clips], numbers, str(path))
    return clips


def _id_of(audio: Path, base: Path) -> str:
    try:
        return audio.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return audio.resolve().as_posix()


def load_manifest(path: Path, columns: Columns) -> list[Clip]:
    if path.suffix.lower() not in SUFFIXES:
        raise MlxBaldError(f"{path}: a manifest is a .jsonl or .csv file")
    return clips_from_table(path, path.parent, columns)
