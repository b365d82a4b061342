"""``mlx-bald fetch``: download and convert models and data sets ahead of time."""
from __future__ import annotations

import argparse
import os


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("fetch", help="download models / data sets into the cache now",
                       description="Fetch registry models (converted to MLX and transformers "
                                   "folders) and real speech sets into $MLX_BALD_CACHE, so later "
                                   "runs work offline. Prints the paths.")
    p.add_argument("items", nargs="+", metavar="ITEM",
                   help="model name (whisper-base, whisper-tiny.en) or set (librivox, fillets-<lang>, "
                        "asterisk-<lang> with lang en, es, fr or ru; synth-en:N builds N synthetic English "
                        "training windows, pack:SET packs SET's clips into 30 s windows)")
    p.add_argument("--format", choices=["mlx", "hf", "both"], default="both",
                   help="model folder formats to prepare (default: both)")
    return p


def run(args) -> int:
    from mlx_bald.data import load_set
    from mlx_bald.hub import resolve_model

    for item in args.items:
        if item == "librivox" or item.startswith(("fillets-", "asterisk-", "synth-en:", "pack:")):
            clips = load_set(item)
            where = os.path.commonpath([c.path for c in clips]) if clips else "?"
            print(f"{item}: {len(clips)} clips in {where}")
            continue
        fmts = ["mlx", "hf"] if args.format == "both" else [args.format]
        for fmt in fmts:
            print(f"{item} [{fmt}]: {resolve_model(item, fmt)}")
    return 0
