"""The local OpenAI-compatible server (apps/server.py) and its demo page.

Request handling is tested against a fake transcriber (milliseconds). The slow tests start ONE
real server (whisper-tiny.en, 127.0.0.1, ephemeral port) for the module and drive it with the
official `openai` client, eight concurrent clients, bad uploads, and headless Chromium."""
from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from subtitle_check import parse_srt, parse_vtt
from apps.server import make_server, parse_model_specs, start_in_thread

RESULT = {"text": " Hello there.", "language": "en", "segments": [
    {"id": 0, "seek": 0, "start": 0.0, "end": 0.9, "text": " Hello there.", "tokens": [5],
     "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 0.9, "no_speech_prob": 0.0,
     "words": [{"word": " Hello", "start": 0.0, "end": 0.4, "probability": 0.9},
               {"word": " there.", "start": 0.4, "end": 0.9, "probability": 0.9}]}]}


def wav_bytes(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                      f"{v}\r\n".encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                  .encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def transcribe_req(server, fields: dict, files: dict | None = None,
                   path: str = "/v1/audio/transcriptions"):
    files = {"file": ("clip.wav", wav_bytes())} if files is None else files
    body, ctype = multipart(fields, files)
    return request(server, "POST", path, body, {"Content-Type": ctype})


class Fake:
    """A transcriber that records its calls; target "boom" raises, ``gate`` can hold a call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, dict]] = []
        self.peaks: list[float] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __call__(self, audio, target, options):
        self.calls.append((len(audio), target, options))
        self.peaks.append(float(np.abs(audio).max()))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if target == "boom":
            raise RuntimeError("model fell over")
        return json.loads(json.dumps(RESULT))


@pytest.fixture(scope="module")
def fake_server():
    fake = Fake()
    srv = make_server({"tiny": "TARGET-A", "other": "TARGET-B", "broken": "boom"},
                      port=0, transcriber=fake, max_upload_bytes=64 * 1024, quiet=True)
    start_in_thread(srv)
    yield srv, fake
    srv.shutdown()
    srv.server_close()


def error_of(status_body: tuple) -> dict:
    status, headers, body = status_body
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# ---- fake transcriber: the HTTP surface -------------------------------------------------------
def test_binds_loopback_and_lists_models(fake_server):
    srv, _ = fake_server
    assert srv.server_address[0] == "127.0.0.1"
    status, _, body = request(srv, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = request(srv, "GET", "/v1/models")
    data = json.loads(body)
    assert status == 200 and data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["tiny", "other", "broken", "whisper-1"]
    assert request(srv, "GET", "/v1/models/other")[0] == 200
    assert error_of(request(srv, "GET", "/v1/models/nope"))["code"] == "model_not_found"


def test_serve_cli_defaults_to_loopback():
    from mlx_bald.cli.main import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000


def test_serve_cli_refuses_unknown_model_and_bad_ids(capsys):
    from mlx_bald.cli.main import main

    assert main(["serve", "--model", "no-such-model-xyz", "--port", "0"]) == 2
    assert main(["serve", "--model", "a=x", "--model", "a=y", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model-xyz'" in err and "model id 'a' given twice" in err


@pytest.mark.parametrize("preload", [True, False])
def test_serve_refuses_a_model_that_cannot_load(tmp_path, capsys, preload):
    """Issue #18: `serve --model BROKEN` printed "serving on ..." and answered 500 to every request."""
    from mlx_bald.cli.main import main
    from test_cli_transcribe import _tiny_mlx_folder

    folder = _tiny_mlx_folder(tmp_path)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    argv = ["serve", "--model", f"b={folder}", "--port", "0"] + ([] if preload else ["--no-preload"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and "serving on" not in err and "Traceback" not in err


@pytest.mark.slow
def test_serve_refuses_a_draft_with_another_tokenizer_at_start_up(capsys):
    """`serve --draft-model`: a draft that cannot draft for the model stops start-up (exit 2)."""
    from mlx_bald.cli.main import main

    assert main(["serve", "--model", "whisper-base", "--draft-model", "whisper-tiny.en", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "vocabulary" in err and "serving on" not in err and "Traceback" not in err


def test_no_log_noise_from_malformed_bodies_or_idle_keep_alive(capfd):
    """Issue #18: python-multipart's "Expected boundary character 45" warning and "Request timed
    out" after a normal keep-alive request were printed to the server's stderr."""
    srv = make_server({"tiny": "T"}, port=0, transcriber=Fake(), quiet=False, idle_timeout=0.5)
    start_in_thread(srv)
    try:
        body = b"not a multipart body at all"
        status, _, _ = request(srv, "POST", "/v1/audio/transcriptions", body,
                               {"Content-Type": "multipart/form-data; boundary=abc"})
        assert status == 400
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
        conn.request("GET", "/health")  # keep-alive: the client then goes quiet
        assert conn.getresponse().read()
        time.sleep(1.5)  # the server drops the idle connection after idle_timeout
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
    err = capfd.readouterr().err
    assert '"POST /v1/audio/transcriptions HTTP/1.1" 400' in err  # the request log still works
    assert "Expected boundary" not in err and "timed out" not in err


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_response_formats(fake_server, fmt):
    srv, _ = fake_server
    status, headers, body = transcribe_req(srv, {"model": "tiny", "response_format": fmt})
    assert status == 200
    text = body.decode()
    if fmt == "json":
        assert json.loads(text) == {"text": "Hello there."}
    elif fmt == "text":
        assert text == "Hello there.\n" and headers["content-type"].startswith("text/plain")
    elif fmt == "srt":
        assert parse_srt(text) == [(0.0, 0.9, "Hello there.")]
    elif fmt == "vtt":
        assert parse_vtt(text) == [(0.0, 0.9, "Hello there.")]
    else:
        data = json.loads(text)
        assert data["task"] == "transcribe" and data["language"] == "english"
        assert data["duration"] == 1.0 and data["text"] == "Hello there."
        assert data["segments"][0]["end"] == 0.9 and "words" not in data["segments"][0]


def test_form_fields_map_to_options_and_targets(fake_server):
    srv, fake = fake_server
    fake.calls.clear()
    transcribe_req(srv, {"model": "whisper-1", "language": "English", "prompt": "Dashwood",
                         "temperature": "0.2"})
    status, _, body = transcribe_req(
        srv, {"model": "other", "response_format": "verbose_json",
              "timestamp_granularities[]": ["word", "segment"]})
    assert json.loads(body)["words"] == [{"word": "Hello", "start": 0.0, "end": 0.4},
                                         {"word": "there.", "start": 0.4, "end": 0.9}]
    transcribe_req(srv, {"model": "tiny"}, path="/v1/audio/translations")
    (n1, t1, o1), (_, t2, o2), (_, t3, o3) = fake.calls
    assert n1 == 16_000 and t1 == "TARGET-A"  # whisper-1 is the first (default) model
    assert o1 == {"task": "transcribe", "language": "en", "initial_prompt": "Dashwood",
                  "temperature": 0.2}
    assert t2 == "TARGET-B" and o2["word_timestamps"] is True
    assert t3 == "TARGET-A" and o3["task"] == "translate"


def test_serve_decode_options_reach_every_request(capsys):
    """`serve --beam-size 5 --length-penalty 0.6` (or --draft-model): every request decodes with them."""
    from mlx_bald.cli.main import main

    assert main(["serve", "--model", "whisper-base", "--patience", "2", "--port", "0"]) == 2
    assert "--patience needs --beam-size" in capsys.readouterr().err
    fake = Fake()
    srv = make_server({"tiny": "T"}, port=0, transcriber=fake, quiet=True,
                      decode={"beam_size": 5, "length_penalty": 0.6, "draft_model": "/d"})
    start_in_thread(srv)
    try:
        assert transcribe_req(srv, {"model": "tiny", "response_format": "srt"})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert fake.calls[0][2]["beam_size"] == 5 and fake.calls[0][2]["length_penalty"] == 0.6
    assert fake.calls[0][2]["draft_model"] == "/d"


@pytest.mark.parametrize("model", ["TARGET-A", "/tmp", "../tiny", "whisper-base", "Tiny"])
def test_only_served_ids_are_accepted(fake_server, model):
    srv, fake = fake_server
    before = len(fake.calls)
    err = error_of(transcribe_req(srv, {"model": model}))
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert request(srv, "GET", "/health")[0] == 200 and len(fake.calls) == before


def _raw(srv, body: bytes, ctype: str, extra: dict | None = None):
    return request(srv, "POST", "/v1/audio/transcriptions", body,
                   {"Content-Type": ctype, **(extra or {})})


@pytest.mark.parametrize("case, status, param, code", [
    ("no model", 400, "model", "missing_required_parameter"),
    ("no file", 400, "file", "missing_required_parameter"),
    ("bad format", 400, "response_format", "invalid_value"),
    ("bad language", 400, "language", "invalid_value"),
    ("bad temperature", 400, "temperature", "invalid_value"),
    ("empty file", 400, "file", "empty_file"),
    ("not audio", 400, "file", "invalid_file_format"),
    ("too big", 413, "file", "file_too_large"),
    ("not multipart", 400, None, None),
])
def test_bad_requests(fake_server, case, status, param, code):
    srv, fake = fake_server
    before = len(fake.calls)
    fields, files = {"model": "tiny"}, None
    if case == "no model":
        fields = {}
    elif case == "no file":
        files = {}
    elif case == "bad format":
        fields["response_format"] = "docx"
    elif case == "bad language":
        fields["language"] = "klingon"
    elif case == "bad temperature":
        fields["temperature"] = "hot"
    elif case == "empty file":
        files = {"file": ("a.wav", b"")}
    elif case == "not audio":
        files = {"file": ("a.wav", b"MZ\x90\x00 definitely an executable" * 50)}
    elif case == "too big":
        files = {"file": ("a.wav", wav_bytes(3.0))}  # 96 KB > 64 KiB limit
    if case == "not multipart":
        result = _raw(srv, b'{"model": "tiny"}', "application/json")
    else:
        result = transcribe_req(srv, fields, files)
    assert result[0] == status
    err = error_of(result)
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert len(fake.calls) == before
    assert transcribe_req(srv, {"model": "tiny"})[0] == 200  # still serving


def test_protocol_errors(fake_server):
    srv, _ = fake_server
    assert error_of(request(srv, "GET", "/v1/nothing"))["code"] == "unknown_url"
    assert request(srv, "POST", "/v1/chat/completions", b"{}")[0] == 404
    assert request(srv, "DELETE", "/v1/models")[0] == 405
    # No Content-Length (chunked): refused rather than read without bound.
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\nContent-Type: multipart/form-data; boundary=b"
                  b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 411")


def test_model_failure_is_500_and_server_keeps_serving(fake_server):
    srv, _ = fake_server
    result = transcribe_req(srv, {"model": "broken"})
    assert result[0] == 500
    err = error_of(result)
    assert err["type"] == "server_error" and "model fell over" in err["message"]
    assert transcribe_req(srv, {"model": "tiny"})[0] == 200


def test_static_demo_page_and_no_traversal(fake_server):
    srv, _ = fake_server
    status, headers, body = request(srv, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/v1/audio/transcriptions" in body and b"/static/app.js" in body
    status, headers, body = request(srv, "GET", "/static/app.js")
    assert status == 200 and b"OfflineAudioContext" in body
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/"):
        assert request(srv, "GET", path)[0] == 404


def test_openapi_schema_and_docs(fake_server):
    srv, _ = fake_server
    status, _, body = request(srv, "GET", "/openapi.json")
    schema = json.loads(body)
    assert status == 200 and {"/v1/audio/transcriptions", "/v1/audio/translations",
                              "/v1/models", "/v1/models/{model_id}", "/health"} <= set(schema["paths"])
    form = schema["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    ref = form["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    fields = schema["components"]["schemas"][ref]
    assert set(fields["required"]) == {"file", "model"}
    assert {"language", "prompt", "temperature", "response_format", "timestamp_granularities[]",
            "stream"} <= set(fields["properties"])
    status, headers, body = request(srv, "GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/openapi.json" in body


def test_full_queue_answers_503_and_queued_requests_finish():
    fake = Fake()
    fake.gate = threading.Event()
    srv = make_server({"tiny": "T"}, port=0, transcriber=fake, max_pending=1, quiet=True)
    start_in_thread(srv)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(transcribe_req, srv, {"model": "tiny"})
            assert fake.started.wait(10)  # the first one is running
            second = pool.submit(transcribe_req, srv, {"model": "tiny"})
            deadline = time.monotonic() + 10
            while srv.worker.pending < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            third = transcribe_req(srv, {"model": "tiny"})
            assert third[0] == 503 and error_of(third)["code"] == "queue_full"
            fake.gate.set()
            assert first.result(30)[0] == 200 and second.result(30)[0] == 200
    finally:
        fake.gate.set()
        srv.shutdown()
        srv.server_close()


def test_connection_limit():
    srv = make_server({"tiny": "T"}, port=0, transcriber=Fake(), max_connections=1, quiet=True)
    start_in_thread(srv)
    try:
        idle = socket.create_connection(srv.server_address[:2], timeout=10)
        time.sleep(0.2)  # let the server accept it
        status, _, body = request(srv, "GET", "/health")
        assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"
        idle.close()
        deadline, status = time.monotonic() + 10, 0
        while status != 200 and time.monotonic() < deadline:
            status = request(srv, "GET", "/health")[0]
            time.sleep(0.05)
        assert status == 200
    finally:
        srv.shutdown()
        srv.server_close()


class FakeBatch:
    """A batch transcriber that records the batch sizes and streams two segments per audio."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, target, audios, options, on_segment=None):
        self.sizes.append(len(audios))
        time.sleep(0.3)  # long enough for concurrent requests to queue up behind the first batch
        out = []
        for i, audio in enumerate(audios):
            segs = [{"id": 0, "start": 0.0, "end": 0.5, "text": " Hello"},
                    {"id": 1, "start": 0.5, "end": 1.0, "text": f" there {len(audio)}."}]
            for seg in segs:
                if on_segment:
                    on_segment(i, seg)
            out.append({"text": "".join(s["text"] for s in segs), "segments": segs, "language": "en"})
        return out


def test_concurrent_json_requests_are_decoded_in_batches():
    batch = FakeBatch()
    srv = make_server({"tiny": "T"}, port=0, transcriber=Fake(), batch_transcriber=batch, quiet=True)
    start_in_thread(srv)
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda n: transcribe_req(
                srv, {"model": "tiny"}, {"file": ("c.wav", wav_bytes(0.5 + n / 10))}), range(8)))
        assert all(r[0] == 200 for r in replies)
        texts = sorted(json.loads(r[2])["text"] for r in replies)
        assert texts == sorted(f"Hello there {int((0.5 + n / 10) * 16000)}." for n in range(8))
        assert sum(batch.sizes) == 8 and max(batch.sizes) > 1 and len(batch.sizes) < 8
        srt = transcribe_req(srv, {"model": "tiny", "response_format": "srt"})  # not batched
        assert srt[0] == 200 and sum(batch.sizes) == 8
    finally:
        srv.shutdown()
        srv.server_close()


def test_stream_sends_openai_transcription_events():
    srv = make_server({"tiny": "T"}, port=0, transcriber=Fake(), batch_transcriber=FakeBatch(), quiet=True)
    start_in_thread(srv)
    try:
        status, headers, body = transcribe_req(srv, {"model": "tiny", "stream": "true"})
        assert status == 200 and headers["content-type"] == "text/event-stream"
        events = [json.loads(line[len("data: "):]) for line in body.decode().split("\n\n") if line]
        assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
        assert events[0]["delta"] == " Hello" and events[1]["start"] == 0.5
        assert events[-1]["text"] == "Hello there 16000."
        bad = transcribe_req(srv, {"model": "tiny", "stream": "true", "response_format": "srt"})
        assert error_of(bad)["param"] == "stream"
    finally:
        srv.shutdown()
        srv.server_close()


def test_parse_model_specs():
    assert parse_model_specs(["whisper-base"]) == {"whisper-base": "whisper-base"}
    assert parse_model_specs(["/m/bald-base/", "fast=whisper-tiny.en"]) == \
        {"bald-base": "/m/bald-base/", "fast": "whisper-tiny.en"}
    with pytest.raises(ValueError):
        parse_model_specs(["a=x", "a=y"])
    with pytest.raises(ValueError):
        parse_model_specs(["=x"])


# ---- real model: one server for the module ----------------------------------------------------
def _norm(text: str) -> str:
    from mlx_bald.evaluate import normalizer_for

    return normalizer_for("en")[1](text)


@pytest.fixture(scope="module")
def real():
    from mlx_bald.data.librivox import load_librivox
    from mlx_bald.hub import resolve_model

    clip = next(c for c in load_librivox() if c.id.endswith("-0930"))  # 3.3 s; tiny.en exact
    srv = make_server({"whisper-tiny.en": str(resolve_model("whisper-tiny.en"))},
                      host="127.0.0.1", port=0, max_upload_bytes=1024 * 1024, quiet=True)
    start_in_thread(srv)
    yield srv, clip
    srv.shutdown()
    srv.server_close()


def _client(srv):
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.mark.slow
def test_openai_client_on_real_speech(real):
    srv, clip = real
    client = _client(srv)
    assert [m.id for m in client.models.list()] == ["whisper-tiny.en", "whisper-1"]
    with open(clip.path, "rb") as f:
        out = client.audio.transcriptions.create(file=f, model="whisper-tiny.en")
    assert _norm(out.text) == _norm(clip.text)


@pytest.mark.slow
def test_eight_concurrent_clients_all_answered(real):
    srv, clip = real
    client = _client(srv)
    data = clip.path.read_bytes()
    formats = ["json", "text", "srt", "vtt", "verbose_json", "json", "text", "verbose_json"]

    def one(fmt: str) -> str:
        out = client.audio.transcriptions.create(file=("clip.wav", data), model="whisper-1",
                                                 response_format=fmt)
        if fmt == "srt":
            return " ".join(c[2] for c in parse_srt(out))
        if fmt == "vtt":
            return " ".join(c[2] for c in parse_vtt(out))
        return out if isinstance(out, str) else out.text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, formats))
    assert [_norm(t) for t in texts] == [_norm(clip.text)] * 8


@pytest.mark.slow
def test_openai_client_streams_real_speech(real):
    srv, clip = real
    client = _client(srv)
    with open(clip.path, "rb") as f:
        events = list(client.audio.transcriptions.create(file=f, model="whisper-1", stream=True))
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and types.count("transcript.text.delta") >= 1
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert _norm(events[-1].text) == _norm(deltas) == _norm(clip.text)


@pytest.mark.slow
def test_eight_concurrent_json_requests_equal_one_after_another(real):
    srv, clip = real
    client = _client(srv)
    data = clip.path.read_bytes()

    def one(_: int) -> str:
        return client.audio.transcriptions.create(file=("clip.wav", data), model="whisper-1").text

    alone = [one(i) for i in range(2)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    assert together == [alone[0]] * 8 and alone[1] == alone[0]


@pytest.mark.slow
def test_bad_uploads_answered_while_serving(real):
    import openai

    srv, clip = real
    client = _client(srv)
    with ThreadPoolExecutor(1) as pool:  # a real transcription is queued/running meanwhile
        busy = pool.submit(lambda: client.audio.transcriptions.create(
            file=("clip.wav", clip.path.read_bytes()), model="whisper-1"))
        cases = [
            (("big.wav", wav_bytes(40.0)), "whisper-1", 413, "file_too_large"),  # 1.28 MB
            (("empty.wav", b""), "whisper-1", 400, "empty_file"),
            (("notes.wav", b"just some text, no audio here\n" * 30), "whisper-1", 400,
             "invalid_file_format"),
            (("clip.wav", clip.path.read_bytes()), "whisper-large-v3", 404, "model_not_found"),
        ]
        for file, model, status, code in cases:
            with pytest.raises(openai.APIStatusError) as info:
                client.audio.transcriptions.create(file=file, model=model)
            assert info.value.status_code == status
            assert info.value.body["code"] == code and info.value.body["message"]
            assert info.value.body["type"] == "invalid_request_error"
        assert _norm(busy.result(600).text) == _norm(clip.text)
    assert request(srv, "GET", "/health")[0] == 200


@pytest.mark.slow
def test_demo_page_in_headless_chromium(real, tmp_path):
    from apps.browser import find_chromium, transcribe_in_demo_page

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian package: chromium)")
    srv, clip = real
    shot = tmp_path / "demo.png"
    shown = transcribe_in_demo_page(srv.url + "/", clip.path, screenshot=shot, timeout=600)
    assert not shown["error"], shown
    assert _norm(shown["text"]) == _norm(clip.text)
    assert shown["segments"] >= 1
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_page_records_from_the_microphone(fake_server):
    """Chromium's fake microphone -> MediaRecorder (webm/opus) -> 16 kHz WAV in the page."""
    from apps.browser import find_chromium, record_in_demo_page

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian package: chromium)")
    srv, fake = fake_server
    fake.calls.clear()
    fake.peaks.clear()
    shown = record_in_demo_page(srv.url + "/", seconds=1.5)
    assert not shown["error"], shown
    assert shown["text"] == "Hello there."
    (samples, target, _), = fake.calls
    assert target == "TARGET-A"  # the first model in the page's list
    assert 1.0 * 16_000 <= samples <= 3.0 * 16_000  # about 1.5 s, decoded at 16 kHz
    (peak,) = fake.peaks
    assert peak > 0.1  # the fake microphone's beep, not silence
