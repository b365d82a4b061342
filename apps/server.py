"""A local OpenAI-compatible transcription server (standard library HTTP + one inference thread).

Endpoints: POST /v1/audio/transcriptions and /v1/audio/translations (multipart: file, model,
language, prompt, temperature, response_format, timestamp_granularities[], stream), GET
/v1/models, GET /v1/models/<id>, GET /health, and the demo page at / (apps/static).

json and text answers are decoded with mlx_bald.batched, batched dynamically with the other
requests waiting for the same model and options; ``stream=true`` answers with OpenAI's
transcription events as each chunk is decoded. srt/vtt/verbose_json use mlx-whisper's full
transcribe (timestamp tokens, finer segments), one request at a time.

Served model ids are fixed by the operator at start-up; a request can only pick one of those ids
(never a path or a hub name), and "whisper-1" is an alias of the default model.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import socket
import threading
import time
import traceback
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mlx_whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from apps.form import FormError, parse_form
from apps.openai_format import RESPONSE_FORMATS, error_body, render
from apps.worker import BatchTranscriber, InferenceWorker, QueueFullError, Transcriber

log = logging.getLogger("mlx_bald.server")

SAMPLE_RATE = 16_000
OPENAI_ALIAS = "whisper-1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class ApiError(Exception):
    """Answered as the OpenAI error JSON with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = \
            status, message, param, code, type_


@dataclass
class ServerConfig:
    models: dict[str, str]             # served id -> target handed to the transcriber
    max_upload_bytes: int = 25 * 1024 * 1024
    max_pending: int = 32              # queued transcriptions before 503
    max_connections: int = 64          # open connections before 503
    request_timeout: float = 900.0     # seconds a request waits for its transcription
    static_dir: Path = STATIC_DIR
    quiet: bool = False
    decode: dict[str, Any] = field(default_factory=dict)  # e.g. beam_size: applied to every request
    aliases: dict[str, str] = field(default_factory=dict)  # filled in __post_init__

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model must be served")
        self.aliases = {mid: mid for mid in self.models}
        self.aliases.setdefault(OPENAI_ALIAS, self.default_id)

    @property
    def default_id(self) -> str:
        return next(iter(self.models))

    def target(self, requested: str) -> str | None:
        """The operator's target for a requested id, or None; never looks anything up on disk."""
        mid = self.aliases.get(requested)
        return None if mid is None else self.models[mid]


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``["whisper-base", "small=/models/x"]`` -> {served id: name or folder}; first is default."""
    out: dict[str, str] = {}
    for spec in specs:
        served, sep, ref = spec.partition("=")
        if not sep:
            ref = spec
            served = Path(spec.rstrip("/")).name if ("/" in spec or spec.startswith(".")) else spec
        served, ref = served.strip(), ref.strip()
        if not served or not ref:
            raise ValueError(f"bad --model value {spec!r}: use NAME_OR_DIR or ID=NAME_OR_DIR")
        if served in out:
            raise ValueError(f"model id {served!r} given twice")
        out[served] = ref
    return out


def _parse_language(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip().lower()
    if v in LANGUAGES:
        return v
    if v in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[v]
    raise ApiError(400, f"Unsupported language {value!r}; use an ISO-639-1 code such as 'en'.",
                   param="language", code="invalid_value")


def _parse_temperature(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not 0.0 <= t <= 1.0:
        raise ApiError(400, "temperature must be a number between 0 and 1.",
                       param="temperature", code="invalid_value")
    return t


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlx-bald"
    timeout = 60  # seconds of client silence before the connection is dropped
    server: "TranscriptionServer"

    # ---- plumbing -------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if not self.server.config.quiet:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        # An idle keep-alive connection closing after `timeout` is normal, not an error.
        if not format.startswith("Request timed out"):
            super().log_error(format, *args)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, err: ApiError) -> None:
        self._json(err.status, error_body(err.message, err.type, err.param, err.code))

    def _path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def _discard_body(self) -> None:
        """Read and drop an unwanted body so the client can read our answer; bounded."""
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > 4 * self.server.config.max_upload_bytes + (1 << 20) \
                or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            n -= len(chunk)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "Chunked uploads are not supported; send a Content-Length.")
        try:
            n = int(self.headers["Content-Length"])
        except (KeyError, TypeError, ValueError):
            self.close_connection = True
            raise ApiError(411, "A Content-Length header is required.") from None
        limit = self.server.config.max_upload_bytes
        if n > limit:
            self._discard_body()
            raise ApiError(413, f"Maximum content size limit ({limit} bytes) exceeded "
                                f"({n} bytes received).", param="file", code="file_too_large")
        body = self.rfile.read(n)
        if len(body) != n:
            self.close_connection = True
            raise ApiError(400, "The request body ended early.")
        return body

    # ---- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        path = self._path()
        try:
            if path in ("/", "/index.html"):
                self._static("index.html")
            elif path.startswith("/static/"):
                self._static(path[len("/static/"):])
            elif path == "/health":
                self._json(200, {"status": "ok", "models": list(self.server.config.models),
                                 "queued": self.server.worker.pending})
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": [
                    self._model_obj(mid) for mid in self.server.config.aliases]})
            elif path.startswith("/v1/models/"):
                mid = path[len("/v1/models/"):]
                if mid not in self.server.config.aliases:
                    raise ApiError(404, f"The model '{mid}' does not exist.",
                                   param="model", code="model_not_found")
                self._json(200, self._model_obj(mid))
            else:
                raise ApiError(404, f"Unknown request URL: GET {path}.", code="unknown_url")
        except ApiError as err:
            self._error(err)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self._path()
        try:
            if path == "/v1/audio/transcriptions":
                self._audio("transcribe")
            elif path == "/v1/audio/translations":
                self._audio("translate")
            else:
                self._discard_body()
                raise ApiError(404, f"Unknown request URL: POST {path}.", code="unknown_url")
        except ApiError as err:
            self._error(err)
        except Exception as exc:  # a bug of ours: answer 500 instead of dropping the connection
            log.error("request failed:\n%s", traceback.format_exc())
            self.close_connection = True
            self._error(ApiError(500, f"Internal error: {type(exc).__name__}: {exc}",
                                 type_="server_error"))

    def _not_allowed(self) -> None:
        self._discard_body()
        self._error(ApiError(405, f"Method {self.command} is not allowed on {self._path()}."))

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _model_obj(self, mid: str) -> dict[str, Any]:
        return {"id": mid, "object": "model", "created": self.server.started,
                "owned_by": "mlx-bald"}

    def _static(self, name: str) -> None:
        file = self.server.static_files.get(name)
        if file is None:
            raise ApiError(404, f"Unknown request URL: GET /static/{name}.", code="unknown_url")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, file.read_bytes(), ctype, {"Cache-Control": "no-cache"})

    def _audio(self, task: str) -> None:
        cfg = self.server.config
        body = self._read_body()
        try:
            form = parse_form(body, self.headers.get("Content-Type", ""))
        except FormError as exc:
            raise ApiError(400, f"{exc}. Send the audio as multipart/form-data field 'file'.")

        model = form.get("model")
        if not model:
            raise ApiError(400, "you must provide a model parameter", param="model",
                           code="missing_required_parameter")
        target = cfg.target(model)
        if target is None:
            raise ApiError(404, f"The model '{model}' does not exist on this server; served: "
                                f"{', '.join(cfg.aliases)}.", param="model",
                           code="model_not_found")
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}.",
                           param="response_format", code="invalid_value")
        options: dict[str, Any] = {**cfg.decode, "task": task, "language": _parse_language(form.get("language"))}
        temperature = _parse_temperature(form.get("temperature"))
        if temperature is not None:
            options["temperature"] = temperature
        if form.get("prompt"):
            options["initial_prompt"] = form.get("prompt")
        granularities = set(form.get_all("timestamp_granularities[]")
                            + form.get_all("timestamp_granularities"))
        if granularities - {"word", "segment"}:
            raise ApiError(400, "timestamp_granularities must be 'word' and/or 'segment'.",
                           param="timestamp_granularities", code="invalid_value")
        words = "word" in granularities and fmt == "verbose_json"
        if words:
            options["word_timestamps"] = True

        upload = form.files.get("file")
        if upload is None:
            raise ApiError(400, "you must provide a 'file' (the audio, as a multipart file field)",
                           param="file", code="missing_required_parameter")
        stream = (form.get("stream") or "false").strip().lower() == "true"
        if stream and fmt not in ("json", "text"):
            raise ApiError(400, "stream=true needs response_format json or text.", param="stream",
                           code="invalid_value")
        audio = self._decode(upload.data, upload.filename)
        if stream:
            self._stream(audio, target, options)
        else:  # plain text answers are decoded in batches with whatever else is waiting
            self._run(audio, target, options, fmt, task, words, batch=fmt in ("json", "text"))

    def _decode(self, data: bytes, filename: str):
        from mlx_bald.audio import load_audio
        from mlx_bald.errors import AudioError

        if not data:
            raise ApiError(400, f"The uploaded file '{filename}' is empty.", param="file",
                           code="empty_file")
        try:
            audio = load_audio(data, name=filename or "file")
        except AudioError as exc:
            raise ApiError(400, f"Invalid file format: {exc}", param="file",
                           code="invalid_file_format") from None
        if audio.size == 0:
            raise ApiError(400, f"The uploaded file '{filename}' holds no audio samples.",
                           param="file", code="empty_file")
        return audio

    def _stream(self, audio, target: str, options: dict) -> None:
        """OpenAI's transcription stream: server-sent events, a ``transcript.text.delta`` per
        decoded chunk (with its start and end seconds) and a final ``transcript.text.done``."""
        import queue

        segments: queue.Queue = queue.Queue()
        try:
            fut = self.server.worker.submit(audio, target, options, on_segment=segments.put)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), type_="server_error", code="queue_full") from None
        fut.add_done_callback(lambda _f: segments.put(None))
        self.close_connection = True  # the stream ends when the connection does
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        deadline = time.monotonic() + self.server.config.request_timeout

        def event(body: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n")
            self.wfile.flush()

        try:
            while (seg := segments.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
                event({"type": "transcript.text.delta", "delta": seg["text"], "start": seg["start"],
                       "end": seg["end"]})
        except queue.Empty:
            fut.cancel()
            event({"type": "error", "error": error_body("The transcription did not finish in time.",
                                                        "server_error", code="timeout")["error"]})
            return
        if fut.exception() is not None:
            log.error("transcription failed: %r", fut.exception())
            event({"type": "error", "error": error_body(f"Transcription failed: {fut.exception()}",
                                                        "server_error")["error"]})
            return
        event({"type": "transcript.text.done", "text": fut.result()["text"].strip()})

    def _run(self, audio, target: str, options: dict, fmt: str, task: str, words: bool,
             batch: bool = False) -> None:
        worker = self.server.worker
        try:
            fut = worker.submit(audio, target, options, batch=batch)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), type_="server_error", code="queue_full") from None
        try:
            result = fut.result(timeout=self.server.config.request_timeout)
        except FutureTimeout:
            fut.cancel()
            raise ApiError(504, "The transcription did not finish in time.",
                           type_="server_error", code="timeout") from None
        except Exception as exc:  # the model failed: report it, keep serving
            log.error("transcription failed:\n%s", traceback.format_exc())
            raise ApiError(500, f"Transcription failed: {type(exc).__name__}: {exc}",
                           type_="server_error") from None
        out, ctype = render(result, fmt, task=task, duration=audio.size / SAMPLE_RATE,
                            words=words)
        self._send(200, out, ctype)


class TranscriptionServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: ServerConfig,
                 transcriber: Transcriber, batch_transcriber: BatchTranscriber | None = None) -> None:
        self.config = config
        self.started = int(time.time())
        self.static_files = {p.name: p for p in sorted(Path(config.static_dir).glob("*"))
                             if p.is_file()}
        self._slots = threading.BoundedSemaphore(config.max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)  # binds; the worker starts only once that worked
        self.worker = InferenceWorker(transcriber, max_pending=config.max_pending,
                                      batch_transcriber=batch_transcriber)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            body = json.dumps(error_body("Too many open connections; try again later.",
                                         "server_error", code="too_many_connections")).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.worker.stop()


def mlx_transcriber(audio, target: str, options: dict) -> dict:
    """The real transcriber: mlx_bald.transcribe on the inference thread."""
    from mlx_bald.transcribe import transcribe

    return transcribe(audio, model=target, **options)


def mlx_batch_transcriber(target: str, audios: list, options: dict, on_segment=None) -> list[dict]:
    """Several requests with the same options as one batch (mlx_bald.batched), on the inference thread."""
    from mlx_bald.batched import OPTIONS, transcribe_many

    keep = {k: options[k] for k in OPTIONS if k in options}
    return transcribe_many(audios, target, batch_size=8, on_segment=on_segment, **keep)


def make_server(models: dict[str, str], host: str = "127.0.0.1", port: int = 8000,
                transcriber: Transcriber | None = None, batch_transcriber: BatchTranscriber | None = None,
                **config: Any) -> TranscriptionServer:
    """Build (not start) a server; ``port=0`` picks a free port (see ``server.url``). With a fake
    ``transcriber`` and no ``batch_transcriber``, every request goes through the transcriber."""
    cfg = ServerConfig(models=dict(models), **config)
    if transcriber is None and batch_transcriber is None:
        transcriber, batch_transcriber = mlx_transcriber, mlx_batch_transcriber
    return TranscriptionServer((host, port), cfg, transcriber or mlx_transcriber, batch_transcriber)


def start_in_thread(server: TranscriptionServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="mlx-bald-http", daemon=True)
    t.start()
    return t
