"""The HTTP API on FastAPI: OpenAI's audio endpoints, models, health and the demo page.

POST /v1/audio/transcriptions and /v1/audio/translations (multipart: file, model, language,
prompt, temperature, response_format, timestamp_granularities[], stream), GET /v1/models,
GET /v1/models/{id}, GET /health, the demo page at / (apps/static), /openapi.json and /docs.
Every error is OpenAI's error JSON. Transcriptions run on the InferenceWorker's thread; a request
whose client disconnects while it waits cancels its job (see apps/worker.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core, which mlx_whisper imports)
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from mlx_whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from apps.openai_format import RESPONSE_FORMATS, error_body, render
from apps.worker import InferenceWorker, QueueFullError, ShuttingDownError

log = logging.getLogger("uvicorn.error")  # uvicorn's log: the server's own lines read alike

SAMPLE_RATE = 16_000
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
FORM_HINT = "Send the audio as multipart/form-data field 'file'."
_MESSAGES = {  # OpenAI's wording for a missing or bad form field
    "model": "you must provide a model parameter",
    "file": "you must provide a 'file' (the audio, as a multipart file field)",
    "response_format": f"response_format must be one of {', '.join(RESPONSE_FORMATS)}.",
    "temperature": "temperature must be a number between 0 and 1.",
    "stream": "stream must be true or false.",
}


class ApiError(Exception):
    """Answered as the OpenAI error JSON with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = \
            status, message, param, code, type_

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code),
                            status_code=self.status, headers=headers)


@dataclass
class AudioForm:
    file: Annotated[UploadFile, File(description="the audio (any format ffmpeg reads)")]
    model: Annotated[str, Form(description="a served model id, or whisper-1 for the default")]
    language: Annotated[str | None, Form(description="ISO-639-1 code or English name")] = None
    prompt: Annotated[str | None, Form()] = None
    temperature: Annotated[float | None, Form(ge=0.0, le=1.0)] = None
    response_format: Annotated[ResponseFormat, Form()] = "json"
    timestamp_granularities: Annotated[list[Literal["word", "segment"]] | None,
                                       Form(alias="timestamp_granularities[]")] = None
    stream: Annotated[bool, Form(description="server-sent events (json or text only)")] = False


def parse_language(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip().lower()
    if v in LANGUAGES:
        return v
    if v in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[v]
    raise ApiError(400, f"Unsupported language {value!r}; use an ISO-639-1 code such as 'en'.",
                   param="language", code="invalid_value")


def create_app(config: Any, worker: InferenceWorker, started: int) -> FastAPI:
    """The FastAPI app for a ServerConfig (apps/server.py) and its inference worker."""
    app = FastAPI(title="mlx-bald", summary="Local OpenAI-compatible transcription server",
                  version="0.1.0")
    _add_error_handlers(app)

    def model_obj(mid: str) -> dict[str, Any]:
        return {"id": mid, "object": "model", "created": started, "owned_by": "mlx-bald"}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(config.models), "queued": worker.pending}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_obj(mid) for mid in config.aliases]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str) -> dict[str, Any]:
        if model_id not in config.aliases:
            raise ApiError(404, f"The model '{model_id}' does not exist.", param="model",
                           code="model_not_found")
        return model_obj(model_id)

    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(config.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=config.static_dir), name="static")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, form: Annotated[AudioForm, Depends()]) -> Response:
        return await _audio(request, form, "transcribe", config, worker)

    @app.post("/v1/audio/translations")
    async def translations(request: Request, form: Annotated[AudioForm, Depends()]) -> Response:
        return await _audio(request, form, "translate", config, worker)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            err = ApiError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")
        elif exc.status_code == 405:
            err = ApiError(405, f"Method {method} is not allowed on {path}.")
        elif exc.status_code == 400 and path.startswith("/v1/audio/"):
            err = ApiError(400, f"{str(exc.detail).rstrip('.')}. {FORM_HINT}")  # a body python-multipart refused
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return err.response(getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_form(request: Request, exc: RequestValidationError) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return ApiError(400, f"Content-Type must be multipart/form-data. {FORM_HINT}").response()
        first = exc.errors()[0]
        name = str(first["loc"][-1]).removesuffix("[]")
        missing = first["type"] == "missing"
        message = _MESSAGES.get(name) or f"{name}: {first['msg']}"
        if name == "timestamp_granularities":
            message = "timestamp_granularities must be 'word' and/or 'segment'."
        return ApiError(400, message, param=name,
                        code="missing_required_parameter" if missing else "invalid_value").response()

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        # a bug of ours: OpenAI's error JSON (uvicorn still logs the traceback)
        return ApiError(500, f"Internal error: {type(exc).__name__}: {exc}",
                        type_="server_error").response()


def _decode(data: bytes, filename: str):
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


def _submit(worker: InferenceWorker, *args: Any, **kwargs: Any):
    try:
        return worker.submit(*args, **kwargs)
    except QueueFullError as exc:
        raise ApiError(503, str(exc), type_="server_error", code="queue_full") from None
    except ShuttingDownError as exc:
        raise ApiError(503, str(exc), type_="server_error", code="shutting_down") from None


async def _audio(request: Request, form: AudioForm, task: str, config: Any,
                 worker: InferenceWorker) -> Response:
    if not form.model:
        raise ApiError(400, _MESSAGES["model"], param="model", code="missing_required_parameter")
    target = config.target(form.model)
    if target is None:
        raise ApiError(404, f"The model '{form.model}' does not exist on this server; served: "
                            f"{', '.join(config.aliases)}.", param="model", code="model_not_found")
    fmt = form.response_format
    options: dict[str, Any] = {**config.decode, "task": task, "language": parse_language(form.language)}
    if form.temperature is not None:
        options["temperature"] = form.temperature
    if form.prompt:
        options["initial_prompt"] = form.prompt
    words = "word" in (form.timestamp_granularities or ()) and fmt == "verbose_json"
    if words:
        options["word_timestamps"] = True
    if form.stream and fmt not in ("json", "text"):
        raise ApiError(400, "stream=true needs response_format json or text.", param="stream",
                       code="invalid_value")
    audio = await run_in_threadpool(_decode, await form.file.read(), form.file.filename or "")
    if form.stream:
        return _stream(request, worker, audio, target, options, config.request_timeout)
    # plain text answers are decoded in batches with whatever else is waiting
    fut = _submit(worker, audio, target, options, batch=fmt in ("json", "text"))
    result = await _result(request, fut, config.request_timeout)
    if result is None:
        return Response(status_code=499)  # nobody reads it: the client is gone
    body, ctype = render(result, fmt, task=task, duration=audio.size / SAMPLE_RATE, words=words)
    return Response(body, media_type=ctype)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result(request: Request, fut, timeout: float) -> dict | None:
    """The job's result; None if the client left first (its job is cancelled)."""
    waiter, gone = asyncio.wrap_future(fut), asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiter, gone}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if waiter not in done:
        running = not fut.cancel()
        if gone in done:
            log.info("client %s left: its %s", _peer(request),
                     "result is dropped when its batch ends" if running else "queued job is dropped")
            return None
        raise ApiError(504, "The transcription did not finish in time.", type_="server_error",
                       code="timeout")
    try:
        return waiter.result()
    except ShuttingDownError as exc:
        raise ApiError(503, str(exc), type_="server_error", code="shutting_down") from None
    except Exception as exc:  # the model failed: report it, keep serving
        log.error("transcription failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        raise ApiError(500, f"Transcription failed: {type(exc).__name__}: {exc}",
                       type_="server_error") from None


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


class ClientGone(Exception):
    """Raised in the inference thread to stop decoding for a stream nobody reads any more."""


def _sse(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def _stream(request: Request, worker: InferenceWorker, audio, target: str, options: dict,
            timeout: float) -> StreamingResponse:
    """OpenAI's transcription stream: server-sent events, a ``transcript.text.delta`` per
    decoded chunk (with its start and end seconds) and a final ``transcript.text.done``."""
    loop = asyncio.get_running_loop()
    segments: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def put(item: dict | None) -> None:  # from the inference thread
        if not loop.is_closed():
            loop.call_soon_threadsafe(segments.put_nowait, item)

    def on_segment(seg: dict) -> None:
        if gone.is_set():
            raise ClientGone("the client left the stream")
        put(seg)

    fut = _submit(worker, audio, target, options, on_segment=on_segment)
    fut.add_done_callback(lambda _f: put(None))

    async def events():
        deadline = loop.time() + timeout
        try:
            while True:
                try:
                    seg = await asyncio.wait_for(segments.get(), max(0.1, deadline - loop.time()))
                except TimeoutError:
                    fut.cancel()
                    yield _sse({"type": "error", "error": error_body(
                        "The transcription did not finish in time.", "server_error", code="timeout")["error"]})
                    return
                if seg is None:
                    break
                yield _sse({"type": "transcript.text.delta", "delta": seg["text"],
                            "start": seg["start"], "end": seg["end"]})
            if (exc := fut.exception()) is not None:
                log.error("transcription failed: %r", exc)
                yield _sse({"type": "error", "error": error_body(
                    f"Transcription failed: {exc}", "server_error")["error"]})
                return
            yield _sse({"type": "transcript.text.done", "text": fut.result()["text"].strip()})
        finally:
            if not fut.done():  # the client left mid-stream (or the server is stopping)
                gone.set()
                running = not fut.cancel()
                log.info("client %s left the stream: %s", _peer(request),
                         "decoding stops at its next chunk" if running else "queued job dropped")

    return StreamingResponse(events(), headers={"Content-Type": "text/event-stream",
                                                "Cache-Control": "no-cache"})
