"""Screenshot the demo page after a real transcription (headless Chromium, loopback server).

    python -m apps.demo_screenshot [--model whisper-base] [--audio FILE] [--out apps/screenshot.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
from apps.browser import transcribe_in_demo_page
from apps.server import make_server, start_in_thread


def main(argv: list[str] | None = None) -> int:
    from mlx_bald.hub import default_model, resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--audio", default=None, help="default: the LibriVox example clip")
    p.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    if args.audio is None:
        from mlx_bald.data.librivox import example_clip

        args.audio = str(example_clip().path)
    server = make_server({args.model: str(resolve_model(args.model))}, host="127.0.0.1",
                         port=0, quiet=True)
    start_in_thread(server)
    try:
        shown = transcribe_in_demo_page(server.url + "/", args.audio, screenshot=args.out)
    finally:
        server.shutdown()
        server.server_close()
    print(f"{args.out}: {shown['status']!r}, text {shown['text']!r}", file=sys.stderr)
    return 1 if shown["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
