"""Command-line options shared by the commands that decode (transcribe, eval, serve, bench)."""
from __future__ import annotations

import argparse

from mlx_bald.cli.arg_types import optional_fraction, positive_float, positive_int


def add_beam_args(p: argparse.ArgumentParser) -> None:
    """--beam-size, --patience, --length-penalty with openai-whisper's meaning."""
    p.add_argument("--beam-size", type=positive_int, default=None,
                   help="beam search with this many beams at temperature 0 (openai-whisper's; e.g. 5); "
                        "default: greedy. Fallback temperatures above 0 sample as usual")
    p.add_argument("--patience", type=positive_float, default=None,
                   help="beam search stops after beam-size x patience sequences have ended (default 1.0)")
    p.add_argument("--length-penalty", type=optional_fraction, default=None,
                   help="ranking of finished beams: None = log-prob / length; alpha in [0, 1] = "
                        "Google NMT's ((5 + length) / 6) ** alpha")


def beam_options(args) -> dict:
    """The beam flags as decoding options (only those given), after checking they fit together."""
    from mlx_bald.errors import MlxBaldError

    if args.patience is not None and args.beam_size is None:
        raise MlxBaldError("--patience needs --beam-size")
    return {k: v for k, v in (("beam_size", args.beam_size), ("patience", args.patience),
                              ("length_penalty", args.length_penalty)) if v is not None}


DRAFT_HELP = ("speculative decoding: this cheaper model (same tokenizer; e.g. a compressed student, a "
              "shortlist-head folder, whisper-base with merged layers) proposes tokens that the model "
              "checks several at a time. Greedy output is identical to the model alone; sampling "
              "fallback, beam search and batches of several windows decode without the draft (said once)")


def add_draft_arg(p) -> None:
    """--draft-model NAME (one definition for transcribe, eval, serve)."""
    p.add_argument("--draft-model", default=None, metavar="MODEL", help=DRAFT_HELP)


SHORT_CONTEXT = {"auto": None, "on": True, "off": False}


def add_short_context_arg(p) -> None:
    """--short-context auto|on|off (one definition for the commands that decode)."""
    p.add_argument("--short-context", choices=tuple(SHORT_CONTEXT), default="auto",
                   help="encode a short clip on its own frames (rounded up to 2 s) instead of a padded 30 s "
                        "window: auto = where the model was tuned for it (mlx-bald compress --recipe "
                        "short-context) and the clip or chunk is short enough; on = require it (refused "
                        "otherwise); off = always full windows")
