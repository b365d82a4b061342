"""OpenAI audio API shapes: response bodies built from an mlx_whisper result, and error bodies.

Subtitles come from mlx_whisper.writers so the server and the CLI write the same SRT/VTT.
"""
from __future__ import annotations

import io
import json
from typing import Any

from mlx_whisper.tokenizer import LANGUAGES
from mlx_whisper.writers import WriteSRT, WriteVTT

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

_CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

# The segment fields OpenAI's verbose_json carries (mlx_whisper's segments have them all).
_SEGMENT_KEYS = (
    "id", "seek", "start", "end", "text", "tokens", "temperature",
    "avg_logprob", "compression_ratio", "no_speech_prob",
)


def error_body(message: str, type_: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error JSON: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _subtitles(writer_cls: type, result: dict) -> str:
    buf = io.StringIO()
    # The writers only need output_dir to write files; write_result takes any text stream.
    writer_cls(output_dir=".").write_result(result, file=buf)
    return buf.getvalue()


def _verbose(result: dict, task: str, duration: float, words: bool) -> dict[str, Any]:
    segments = [{k: s[k] for k in _SEGMENT_KEYS if k in s} for s in result.get("segments", [])]
    code = result.get("language") or ""
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGES.get(code, code),
        "duration": round(float(duration), 3),
        "text": result.get("text", "").strip(),
        "segments": segments,
    }
    if words:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in result.get("segments", []) for w in s.get("words", [])
        ]
    return body


def render(result: dict, response_format: str, *, task: str = "transcribe",
           duration: float = 0.0, words: bool = False) -> tuple[bytes, str]:
    """Encode ``result`` (mlx_whisper's dict) as ``response_format``: (body, content type)."""
    if response_format == "json":
        text = json.dumps({"text": result.get("text", "").strip()}, ensure_ascii=False)
    elif response_format == "verbose_json":
        text = json.dumps(_verbose(result, task, duration, words), ensure_ascii=False)
    elif response_format == "text":
        text = result.get("text", "").strip() + "\n"
    elif response_format == "srt":
        text = _subtitles(WriteSRT, result)
    elif response_format == "vtt":
        text = _subtitles(WriteVTT, result)
    else:
        raise ValueError(f"unknown response_format {response_format!r}")
    return text.encode("utf-8"), _CONTENT_TYPES[response_format]
