"""A local OpenAI-compatible transcription server: the FastAPI app (apps/api.py) on uvicorn, with
one inference thread (apps/worker.py).

json and text answers are decoded with mlx_bald.batched, batched dynamically with the other
requests waiting for the same model and options; audio longer than one 30 s window is cut into
Silero VAD speech chunks, so no word is cut at a window edge. ``stream=true`` answers with
OpenAI's transcription events as each chunk is decoded. srt/vtt/verbose_json use mlx-whisper's
full transcribe (timestamp tokens, finer segments), one request at a time.

Served model ids are fixed by the operator at start-up; a request can only pick one of those ids
(never a path or a hub name), and "whisper-1" is an alias of the default model.

Limits: uploads (Content-Length required, at most ``max_upload_bytes``; a client silent for
``client_timeout`` mid-upload gets 408), open connections (503 past ``max_connections``), queued
transcriptions (503 past ``max_pending``). Stopping (Ctrl-C, SIGTERM, ``shutdown()``) refuses the
queued requests with 503, lets the running batch finish (up to ``shutdown_grace`` seconds) and
logs both counts.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from apps.api import ApiError, create_app
from apps.openai_format import error_body
from apps.worker import BatchTranscriber, InferenceWorker, Transcriber

log = logging.getLogger("uvicorn.error")

# python-multipart logs every malformed body it rejects ("Expected boundary character 45 ...");
# the client gets a 400 naming the problem and the access log has the line, so keep stderr quiet.
logging.getLogger("python_multipart").addHandler(logging.NullHandler())
logging.getLogger("python_multipart").propagate = False

SAMPLE_RATE = 16_000
OPENAI_ALIAS = "whisper-1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServerConfig:
    models: dict[str, str]             # served id -> target handed to the transcriber
    max_upload_bytes: int = 25 * 1024 * 1024
    max_pending: int = 32              # queued transcriptions before 503
    max_connections: int = 64          # open connections before 503
    request_timeout: float = 900.0     # seconds a request waits for its transcription
    client_timeout: float = 60.0       # seconds of client silence mid-upload before 408
    idle_timeout: float = 5.0          # seconds an idle keep-alive connection stays open
    shutdown_grace: float = 60.0       # seconds the running batch may take when stopping
    static_dir: Path = STATIC_DIR
    quiet: bool = False
    decode: dict[str, Any] = field(default_factory=dict)  # e.g. beam_size: applied to every request
    aliases: dict[str, str] = field(default_factory=dict)  # filled in __post_init__

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model must be served")
        self.static_dir = Path(self.static_dir)
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


def _raw_response(err: ApiError) -> bytes:
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    return (f"HTTP/1.1 {err.status} {'Service Unavailable' if err.status == 503 else 'Error'}\r\n"
            f"content-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def _protocol(max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection limit answered in OpenAI's error JSON, and an
    idle timer from the first byte (uvicorn's keep-alive timer starts after a response)."""
    busy = _raw_response(ApiError(503, "Too many open connections; try again later.",
                                  type_="server_error", code="too_many_connections"))

    class LimitedH11(H11Protocol):
        refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:  # this one counts itself
                self.refused = True
                transport.write(busy)
                if transport.can_write_eof():
                    transport.write_eof()  # the client reads the answer, then closes
                self.loop.call_later(5.0, transport.close)
            else:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            if not self.refused:
                super().data_received(data)

    return LimitedH11


class UploadGuard:
    """ASGI middleware for request bodies: Content-Length required (411), at most ``max_bytes``
    (413, after reading a moderately larger body so the client sees the answer), and a client
    silent for ``client_timeout`` mid-body gets 408 and is disconnected."""

    def __init__(self, app: Any, max_bytes: int, client_timeout: float) -> None:
        self.app, self.max_bytes, self.client_timeout = app, max_bytes, client_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope["headers"]}
        length = headers.get(b"content-length", b"")
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower() or not length.isdigit():
            return await self._answer(send, ApiError(
                411, "A Content-Length header is required (chunked uploads are not supported)."))
        n = int(length)
        if n > self.max_bytes:
            drained = n <= 4 * self.max_bytes + (1 << 20) and await self._drain(receive)
            return await self._answer(send, ApiError(
                413, f"Maximum content size limit ({self.max_bytes} bytes) exceeded ({n} bytes "
                     f"received).", param="file", code="file_too_large"), close=not drained)
        state = {"body_done": False, "stalled": False}

        async def guarded_receive() -> dict:
            if state["body_done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.client_timeout)
            except TimeoutError:
                state["stalled"] = True
                return {"type": "http.disconnect"}
            state["body_done"] = not message.get("more_body", False)
            return message

        async def guarded_send(message: dict) -> None:
            if not state["stalled"]:
                await send(message)

        await self.app(scope, guarded_receive, guarded_send)
        if state["stalled"]:
            client = scope.get("client") or ("?", 0)
            log.warning("client %s:%s stalled mid-upload for %.0f s: answered 408 and disconnected",
                        *client, self.client_timeout)
            await self._answer(send, ApiError(408, f"The upload stalled for {self.client_timeout:g} s.",
                                              code="timeout"))

    async def _drain(self, receive: Any) -> bool:
        try:
            while True:
                message = await asyncio.wait_for(receive(), self.client_timeout)
                if message["type"] != "http.request":
                    return False
                if not message.get("more_body", False):
                    return True
        except TimeoutError:
            return False

    @staticmethod
    async def _answer(send: Any, err: ApiError, close: bool = True) -> None:
        body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": err.status,
                    "headers": headers + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": body})


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (a test may have swapped it since)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _log_config() -> dict:
    """uvicorn's logging, the access log on stderr too (stdout is for programs' output)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler.pop("stream", None)
        handler["class"] = f"{__name__}.StderrHandler"
    return config


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: InferenceWorker) -> None:
        super().__init__(config)
        self.worker = worker

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        refused, running = self.worker.close()
        log.warning("mlx-bald: stopping: %d queued request(s) refused (503 shutting_down), "
                    "%d running finishing", refused, running)
        await super().shutdown(sockets)
        log.warning("mlx-bald: stopped")


class TranscriptionServer:
    """The bound socket, the inference worker and uvicorn; ``serve_forever`` runs it (in the
    main thread, uvicorn handles Ctrl-C and SIGTERM), ``shutdown`` stops it from another thread."""

    def __init__(self, sock: socket.socket, config: ServerConfig, transcriber: Transcriber,
                 batch_transcriber: BatchTranscriber | None = None) -> None:
        self.config, self._sock = config, sock
        self.server_address = sock.getsockname()
        self.started = int(time.time())
        self.worker = InferenceWorker(transcriber, max_pending=config.max_pending,
                                      batch_transcriber=batch_transcriber)
        app = create_app(config, self.worker, self.started)
        app.add_middleware(UploadGuard, max_bytes=config.max_upload_bytes,
                           client_timeout=config.client_timeout)
        self._uvicorn = _Uvicorn(uvicorn.Config(
            app, http=_protocol(config.max_connections), lifespan="off", proxy_headers=False,
            timeout_keep_alive=config.idle_timeout, timeout_graceful_shutdown=config.shutdown_grace,
            access_log=not config.quiet, log_level="warning" if config.quiet else "info",
            log_config=_log_config(), server_header=False), self.worker)
        self._serving = threading.Event()
        self._done = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self._uvicorn.run(sockets=[self._sock])
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving (as Ctrl-C does) and wait until uvicorn has finished."""
        self._uvicorn.should_exit = True
        if self._serving.is_set():
            self._done.wait()

    def server_close(self) -> None:
        self._sock.close()
        self.worker.stop()


def mlx_transcriber(audio: np.ndarray, target: str, options: dict) -> dict:
    """The real transcriber: mlx_bald.transcribe on the inference thread."""
    from mlx_bald.transcribe import transcribe

    return transcribe(audio, model=target, **options)


def mlx_batch_transcriber(target: str, audios: list[np.ndarray], options: dict,
                          on_segment: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Several requests with the same options as one batch (mlx_bald.batched), on the inference
    thread. An audio of one window is that window; a longer one is cut where Silero VAD hears no
    speech (fixed 30 s windows would cut words at their edges)."""
    from mlx_bald.batched import OPTIONS, WINDOW_SECONDS, transcribe_many, window_spans
    from mlx_bald.vad import chunk_spans, speech_probabilities, speech_spans

    spans = []
    for i, audio in enumerate(audios):
        if len(audio) <= WINDOW_SECONDS * SAMPLE_RATE:
            spans += window_spans(i, len(audio))
        else:
            # 0.2 s of padding (Silero's default is 0.03; faster-whisper pads 0.4): chunks that
            # start right at the first phoneme lose words ("And" -> "The") on real speech
            probs = speech_probabilities(audio)
            spans += chunk_spans(i, speech_spans(probs, len(audio), pad=0.2))
    keep = {k: options[k] for k in OPTIONS if k in options}
    try:
        return transcribe_many(audios, target, batch_size=8, spans=spans, on_segment=on_segment, **keep)
    finally:
        import mlx.core as mx

        mx.clear_cache()  # MLX keeps freed buffers of every batch shape it met: RSS grew with load


def make_server(models: dict[str, str], host: str = "127.0.0.1", port: int = 8000,
                transcriber: Transcriber | None = None, batch_transcriber: BatchTranscriber | None = None,
                **config: Any) -> TranscriptionServer:
    """Build (bind, not start) a server; ``port=0`` picks a free port (see ``server.url``). With a
    fake ``transcriber`` and no ``batch_transcriber``, every request goes through the transcriber."""
    cfg = ServerConfig(models=dict(models), **config)
    if transcriber is None and batch_transcriber is None:
        transcriber, batch_transcriber = mlx_transcriber, mlx_batch_transcriber
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return TranscriptionServer(sock, cfg, transcriber or mlx_transcriber, batch_transcriber)


def start_in_thread(server: TranscriptionServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="mlx-bald-http", daemon=True)
    t.start()
    return t
