"""Speculative decoding of base with each draft on whole real sets: acceptance (share of the
draft's proposals base accepted, and per token), decoder tokens/s at batch 1, identical output.
The measuring is the product benchmark's (benchmarks/speculative.py, also behind
``mlx-bald bench --draft-model``); this study runs it on every clip of each set.

    python -m benchmarks.studies.speculative_bench --sets librivox,asterisk-en:test
    python -m benchmarks.studies.speculative_bench --sets fillets-cs:test --limit 40
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.speculative import default_drafts, markdown, measure


def main(argv=None) -> int:
    from benchmarks.lineup import labelled_model
    from mlx_bald.data import load_set
    from mlx_bald.hub import resolve_model
    from mlx_bald.paths import cache_dir
    from mlx_bald.transcribe import default_dtype

    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.speculative_bench",
                                description="Speculative decoding of base with each draft on whole real "
                                            "sets: acceptance, decoder tokens/s at batch 1, identical output.")
    p.add_argument("--sets", default="librivox,asterisk-en:test,fillets-cs:test")
    p.add_argument("--draft-model", dest="drafts", action="append", default=[], metavar="[LABEL=]MODEL",
                   help="drafts to measure (repeatable; default: base + shortlist head and merged3 + "
                        "shortlist head at the converter's default R, N)")
    p.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "speculative.json",
                   help="the JSON written (the committed runs: results/speculative_acceptance*.json)")
    args = p.parse_args(argv)
    base = resolve_model("whisper-base", "mlx")
    drafts = (dict(labelled_model(item) for item in args.drafts) if args.drafts
              else default_drafts(base, cache_dir() / "bench", quick=False))
    result = {}
    for name in args.sets.split(","):
        clips = load_set(name)[: args.limit]
        result[name] = measure(base, drafts, clips, default_dtype(), repeats=1, e2e=False,
                               log=lambda m: print(m, file=sys.stderr))
        print(f"## {name}", *markdown(result[name]), sep="\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
