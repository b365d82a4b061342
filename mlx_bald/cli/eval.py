"""``mlx-bald eval``: corpus WER of a model on a real speech set."""
from __future__ import annotations

import argparse
import json
import sys

from mlx_bald.cli.data_args import SET_FORMS, add_column_args
from mlx_bald.cli.arg_types import positive_int
from mlx_bald.cli.decode_args import add_draft_arg


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="WER of a model on a real speech set (built in, or your own labelled data)",
        description="Transcribe a set of real speech and print corpus WER. Decoding is greedy "
                    "(temperature 0) unless --decode fallback. English uses Whisper's English "
                    "normaliser; other languages Whisper's basic normaliser (lowercase, punctuation removed).")
    p.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    p.add_argument("--set", dest="set_spec", default="librivox", metavar="SET",
                   help=f"{SET_FORMS} (default: librivox)")
    add_column_args(p)
    p.add_argument("--engine", choices=["mlx", "torch"], default="mlx",
                   help="mlx (the runtime) or torch (transformers reference)")
    p.add_argument("--decode", choices=["greedy", "beam", "fallback"], default="greedy",
                   help="greedy (temperature 0, as in the papers' tables), beam (beam search of --beam-size "
                        "at temperature 0, openai-whisper's rules) or fallback (as `mlx-bald "
                        "transcribe` decodes by default: a looping or unlikely hypothesis is re-decoded at "
                        "temperatures 0.2..1.0, seeded; mlx-whisper's thresholds for mlx, transformers' "
                        "for torch)")
    p.add_argument("--beam-size", type=positive_int, default=5, help="beams of --decode beam (default 5)")
    add_draft_arg(p)
    p.add_argument("--limit", type=positive_int, default=None, help="first N clips only (N >= 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--show", action="store_true", help="also print each clip's reference and hypothesis")
    return p


def run(args) -> int:
    from mlx_bald.evaluate import evaluate
    from mlx_bald.hub import default_model

    r = evaluate(args.model or default_model(), args.set_spec, args.engine, args.limit,
                 progress=sys.stderr.isatty(), decode=args.decode, language=args.language,
                 audio_column=args.audio_column, text_column=args.text_column,
                 beam_size=args.beam_size, draft_model=args.draft_model)
    if args.json:
        d = r.to_dict()
        if not args.show:
            d.pop("rows")
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return 0
    if args.show:
        for row in r.rows:
            print(f"{row['id']}\n  REF: {row['reference']}\n  HYP: {row['hypothesis']}")
    print(f"| model | set | engine | decode | clips | audio s | WER % ({r.normalizer}) | RTF |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    rtf = r.wall_seconds / r.audio_seconds if r.audio_seconds else float("nan")
    print(f"| {r.model} | {r.set} | {r.engine} | {r.decode} | {r.n_clips} | {r.audio_seconds:.1f} "
          f"| {r.wer:.2f} | {rtf:.2f} |")
    if r.draft:
        print(f"\ndraft {r.draft['model']}: acceptance {100 * (r.draft['acceptance'] or 0):.1f}% "
              f"({r.draft['accepted']}/{r.draft['proposed']} proposals), {r.draft['tokens']} tokens in "
              f"{r.draft['target_passes']} target passes")
    return 0
