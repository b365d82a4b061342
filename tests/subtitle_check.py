"""Strict SRT and WebVTT readers for tests: they raise SubtitleError on anything malformed and
return the cues as (start seconds, end seconds, text)."""
from __future__ import annotations

import re

_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"


class SubtitleError(ValueError):
    pass


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _check_times(start: float, end: float, prev: float, where: str) -> None:
    if end < start:
        raise SubtitleError(f"{where}: ends ({end}) before it starts ({start})")
    if start < prev:
        raise SubtitleError(f"{where}: starts before the previous cue")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    blocks = [b for b in text.replace("\r\n", "\n").strip("\n").split("\n\n")]
    if not blocks or blocks == [""]:
        raise SubtitleError("no cues")
    cues, prev = [], 0.0
    for i, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if lines[0] != str(i):
            raise SubtitleError(f"cue {i}: expected index line {i!r}, got {lines[0]!r}")
        m = re.fullmatch(_SRT_TIME + " --> " + _SRT_TIME, lines[1] if len(lines) > 1 else "")
        if not m:
            raise SubtitleError(f"cue {i}: bad timing line {lines[1:2]}")
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:])
        _check_times(start, end, prev, f"cue {i}")
        body = lines[2:]
        if not body or not all(line.strip() for line in body):
            raise SubtitleError(f"cue {i}: empty text")
        cues.append((start, end, "\n".join(body)))
        prev = start
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    text = text.replace("\r\n", "\n")
    header, _, rest = text.partition("\n\n")
    if not re.fullmatch(r"WEBVTT([ \t][^\n]*)?", header.split("\n")[0]):
        raise SubtitleError("missing WEBVTT header")
    cues, prev = [], 0.0
    for n, block in enumerate([b for b in rest.strip("\n").split("\n\n") if b], start=1):
        lines = block.split("\n")
        if "-->" not in lines[0]:  # an optional cue identifier
            lines = lines[1:]
        m = re.fullmatch(_VTT_TIME + " --> " + _VTT_TIME + r"([ \t].*)?", lines[0] if lines else "")
        if not m:
            raise SubtitleError(f"cue {n}: bad timing line {lines[:1]}")
        start, end = _seconds(*m.groups()[:4]), _seconds(*m.groups()[4:8])
        _check_times(start, end, prev, f"cue {n}")
        body = lines[1:]
        if not body or any("-->" in line or not line.strip() for line in body):
            raise SubtitleError(f"cue {n}: empty or malformed text")
        cues.append((start, end, "\n".join(body)))
        prev = start
    if not cues:
        raise SubtitleError("no cues")
    return cues
