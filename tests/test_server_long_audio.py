"""Issue #27 item 5: the server's default answers (json, text, stream) for audio longer than one
30 s window. A 54 s file of real LibriVox speech (the five clips twice, 0.5 s apart) puts the
window edge inside "leisure to consider"; fixed 30 s windows answered "leisure to to consider"
while verbose_json (mlx-whisper's sequential decoder) did not."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from test_server import _norm, multipart, request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_server():
    from apps.server import make_server, start_in_thread
    from mlx_bald.data.librivox import load_librivox
    from mlx_bald.hub import resolve_model

    clips = load_librivox()
    parts = []
    for c in clips + clips:
        parts += [c.audio.astype(np.float32), np.zeros(8_000, np.float32)]
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts), 16_000, format="WAV")
    reference = " ".join(c.text for c in clips + clips)
    srv = make_server({"whisper-tiny.en": str(resolve_model("whisper-tiny.en"))}, port=0, quiet=True)
    start_in_thread(srv)
    yield srv, buf.getvalue(), reference
    srv.shutdown()
    srv.server_close()


def _ask(srv, data: bytes, **fields) -> str:
    body, ctype = multipart({"model": "whisper-1", **fields}, {"file": ("long.wav", data)})
    status, _, reply = request(srv, "POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
    assert status == 200, reply
    if fields.get("stream") == "true":
        events = [json.loads(e[len("data: "):]) for e in reply.decode().split("\n\n") if e.strip()]
        assert events[-1]["type"] == "transcript.text.done"
        deltas = "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta")
        assert _norm(deltas) == _norm(events[-1]["text"])
        return events[-1]["text"]
    if fields.get("response_format") in ("verbose_json", None, "json"):
        return json.loads(reply)["text"]
    return reply.decode()


def test_default_answers_for_long_audio_are_as_accurate_as_verbose_json(long_server):
    from mlx_bald.evaluate import corpus_wer

    srv, data, reference = long_server
    verbose = _ask(srv, data, response_format="verbose_json")
    wer_verbose = corpus_wer([reference], [verbose], "en")[0]
    for fields in ({}, {"response_format": "text"}, {"stream": "true"}):
        text = _ask(srv, data, **fields)
        assert "to to" not in _norm(text), (fields, text)
        assert corpus_wer([reference], [text], "en")[0] <= wer_verbose, (fields, text, verbose)
