"""Command-line options shared by the commands that decode (transcribe, eval, serve, bench)."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (beams, clips, batch size)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def optional_float(text: str) -> float | None:
    """argparse type: a float, or None written as 'None' (mlx-whisper's CLI convention)."""
    return None if text == "None" else float(text)


def add_beam_args(p: argparse.ArgumentParser) -> None:
    """--beam-size, --patience, --length-penalty with openai-whisper's meaning."""
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam search with this many beams at temperature 0 (openai-whisper's; e.g. 5); "
                        "default: greedy. Fallback temperatures above 0 sample as usual")
    p.add_argument("--patience", type=float, default=None,
                   help="beam search stops after beam-size x patience sequences have ended (default 1.0)")
    p.add_argument("--length-penalty", type=optional_float, default=None,
                   help="ranking of finished beams: None = log-prob / length; alpha in [0, 1] = "
                        "Google NMT's ((5 + length) / 6) ** alpha")


def beam_options(args) -> dict:
    """The beam flags as decoding options (only those given), after checking they fit together."""
    from mlx_bald.errors import MlxBaldError

    if args.patience is not None and (args.beam_size is None or args.patience <= 0):
        raise MlxBaldError("--patience needs --beam-size and must be above 0")
    if args.length_penalty is not None and not 0 <= args.length_penalty <= 1:
        raise MlxBaldError("--length-penalty must be between 0 and 1")
    return {k: v for k, v in (("beam_size", args.beam_size), ("patience", args.patience),
                              ("length_penalty", args.length_penalty)) if v is not None}


DRAFT_HELP = ("speculative decoding: this cheaper model (same tokenizer; e.g. a compressed student, a "
              "shortlist-head folder, whisper-base with merged layers) proposes tokens that the model "
              "checks several at a time. Greedy output is identical to the model alone; sampling "
              "fallback, beam search and batches of several windows decode without the draft (said once)")


def add_draft_arg(p) -> None:
    """--draft-model NAME (one definition for transcribe, eval, serve)."""
    p.add_argument("--draft-model", default=None, metavar="MODEL", help=DRAFT_HELP)
