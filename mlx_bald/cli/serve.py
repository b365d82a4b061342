"""``mlx-bald serve``: the local OpenAI-compatible transcription server (apps/server.py)."""
from __future__ import annotations

import argparse
import signal
import sys

from mlx_bald.cli.arg_types import port, positive_float, positive_int
from mlx_bald.cli.decode_args import add_beam_args, add_draft_arg, beam_options


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve", help="local OpenAI-compatible transcription server",
        description="Serve POST /v1/audio/transcriptions (OpenAI audio API shape), "
                    "GET /v1/models, GET /health and a demo page at /. Only the models given "
                    "with --model can be requested; 'whisper-1' means the first one.")
    p.add_argument("--model", action="append", metavar="[ID=]NAME_OR_DIR",
                   help="a model to serve, repeatable; ID is the name clients send "
                        "(default: the model name or folder name). Default model: "
                        "$MLX_BALD_MODEL, else whisper-base-bald once built, else whisper-base")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=port, default=8000, help="port (0 picks a free one)")
    p.add_argument("--max-upload-mb", type=positive_float, default=25.0,
                   help="largest accepted upload in MiB (default 25, as OpenAI)")
    p.add_argument("--max-queue", type=positive_int, default=32,
                   help="transcriptions allowed to wait before answering 503 (default 32)")
    p.add_argument("--timeout", type=positive_float, default=900.0,
                   help="seconds a request may wait for its transcription (default 900)")
    p.add_argument("--no-preload", action="store_true",
                   help="load models on first request instead of at start-up")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    group = p.add_argument_group("decoding of every request")
    add_beam_args(group)
    add_draft_arg(group)
    return p


def run(args) -> int:
    from mlx_bald.errors import MlxBaldError

    try:
        from apps.server import LOOPBACK_HOSTS, make_server, parse_model_specs
    except ImportError as e:  # fastapi, uvicorn, python-multipart: the [serve] extra
        raise MlxBaldError(f"the server needs {e.name or 'a missing package'}: "
                           f"pip install 'mlx-bald[serve]'") from None
    from mlx_bald.hub import default_model, resolve_model

    decode = beam_options(args)
    try:
        specs = parse_model_specs(args.model or [default_model()])
    except ValueError as e:
        raise MlxBaldError(str(e)) from None
    # Resolve every model now: requests can then only name these ids, never a path.
    models = {mid: str(resolve_model(ref)) for mid, ref in specs.items()}
    from mlx_bald.load import validate_folder

    if args.draft_model:
        decode["draft_model"] = str(resolve_model(args.draft_model))
    for folder in [*models.values(), *([decode["draft_model"]] if args.draft_model else [])]:
        validate_folder(folder)  # a broken folder stops start-up (also with --no-preload)
    if args.host not in LOOPBACK_HOSTS:
        print(f"mlx-bald: warning: binding {args.host}: the server has no authentication and "
              f"is reachable from other machines", file=sys.stderr)
    try:
        server = make_server(models, host=args.host, port=args.port,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_pending=args.max_queue, request_timeout=args.timeout,
                             quiet=args.quiet, decode=decode)
    except OSError as e:
        raise MlxBaldError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None

    try:
        _check_models(server, models, preload=not args.no_preload, draft=decode.get("draft_model"))
    except MlxBaldError:
        server.server_close()
        raise
    for mid, folder in models.items():
        print(f"mlx-bald: model {mid!r}: {folder}", file=sys.stderr)
    if args.draft_model:
        print(f"mlx-bald: draft model for speculative decoding: {decode['draft_model']}", file=sys.stderr)
    print(f"mlx-bald: serving on {server.url} (demo page: {server.url}/, "
          f"API: {server.url}/v1/audio/transcriptions); Ctrl-C stops", file=sys.stderr, flush=True)
    def stop(signum, frame) -> None:  # SIGTERM (service managers, kill) stops like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        # uvicorn takes Ctrl-C/SIGTERM while serving: it refuses the queued requests, lets the
        # running batch finish, logs both, then raises the signal again (-> KeyboardInterrupt)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _check_models(server, models: dict[str, str], preload: bool, draft: str | None = None) -> None:
    """Load every model (with the draft) on the inference thread before serving (unless not
    preloading); a model that cannot load, or a draft that does not fit it, stops start-up with
    its error instead of failing every request."""
    if not preload:
        return
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.transcribe import get_model

    for mid, folder in models.items():
        try:
            server.worker.call(lambda folder=folder: get_model(folder, draft=draft)).result()
        except MlxBaldError as e:
            raise MlxBaldError(f"model {mid!r} cannot be served: {e}") from None
        except Exception as e:  # MLX or the file system: say which model, no traceback
            raise MlxBaldError(f"model {mid!r} failed to load ({type(e).__name__}: {e})") from None
