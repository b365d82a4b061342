"""``mlx-bald bench``: the benchmark harness (benchmarks/harness.py) from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlx_bald.cli.arg_types import number_list, positive_int


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="speed (and WER of real-weight models) of stock and compressed Whisper",
        description="One run, all models alternating: stock base and tiny.en and compressed shapes "
                    "(3 merged decoder layers, + rank-96 embedding, + rank-32 product-twin attention) "
                    "in mlx-bald's modules, base with the shortlist output head, stock base through mlx-whisper itself and faster-whisper "
                    "(if installed). Decoder tokens/s at batch 1 and 10 with 256 generated tokens, "
                    "encoder ms, end-to-end RTF, peak memory, WER on real sets, an analytic cost model. "
                    "The compressed shapes carry UNTRAINED weights: speed only; pass trained folders "
                    "with --model for their WER. Speculative decoding: base as target with each draft on real "
                    "clips (acceptance, tokens/s, identical output). Writes bench.json, bench.md and pareto.png.")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: benchmarks/results, or ./bench-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="CI check that the harness runs: small random models, one clip, a few tokens "
                        "(seconds; numbers mean nothing)")
    p.add_argument("--model", dest="trained", action="append", default=[], metavar="[LABEL=]FOLDER",
                   help="a trained (compressed) model folder or name to include, with its WER; repeatable")
    p.add_argument("--draft-model", dest="drafts", action="append", default=[], metavar="[LABEL=]MODEL",
                   help="also measure speculative decoding of base with this draft (same tokenizer); "
                        "repeatable. Always measured: base + shortlist head, merged layers + shortlist head")
    p.add_argument("--no-speculative", action="store_true", help="leave out the speculative-decoding rows")
    p.add_argument("--tokens", type=positive_int, default=256, help="generated tokens per sequence (default 256)")
    p.add_argument("--batches", type=number_list(positive_int), default=[1, 10], help="decoder batch sizes (default 1,10)")
    p.add_argument("--repeats", type=positive_int, default=2,
                   help="speed rounds (encoder, decoder at each batch); medians are reported (default 2)")
    p.add_argument("--mlx-whisper-repeats", type=positive_int, default=1,
                   help="speed rounds for stock mlx-whisper, whose decoder is ~5x slower (default 1)")
    p.add_argument("--e2e-repeats", type=positive_int, default=1,
                   help="end-to-end rounds over all clips (default 1)")
    p.add_argument("--sets", default="librivox",
                   help="comma-separated real sets for WER and end-to-end time (default librivox)")
    p.add_argument("--set-limit", type=positive_int, default=None, help="first N clips of each set")
    p.add_argument("--chip", default="M1", help="chip for the cost model's floors: M1 (default), M2, "
                                                "M3, M4, 'M1 Pro', 'M1 Max', 'M2 Max'")
    p.add_argument("--render", type=Path, default=None, metavar="BENCH_JSON",
                   help="measure nothing: redraw bench.md, pareto.png (and the results page) from a "
                        "bench.json of an earlier run, into its folder")
    p.add_argument("--no-faster-whisper", action="store_true", help="leave out the faster-whisper peer")
    p.add_argument("--no-mlx-whisper", action="store_true", help="leave out stock mlx-whisper base")
    return p


def run(args) -> int:
    from benchmarks.cost_model import CHIPS
    from benchmarks.harness import BenchConfig, run as run_bench, write_outputs
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.fsutil import refuse_file

    if args.render is not None:
        import json

        if not args.render.is_file():
            raise MlxBaldError(f"no bench.json at {args.render}")
        paths = write_outputs(json.loads(args.render.read_text()), args.render.parent, write_json=False)
        print("wrote " + ", ".join(str(p) for k, p in paths.items() if k != "json"), file=sys.stderr)
        return 0
    if args.chip not in CHIPS:
        raise MlxBaldError(f"unknown chip {args.chip!r}; known: {', '.join(CHIPS)}")
    batches = tuple(args.batches)
    out = args.out or Path("bench-quick" if args.quick else "benchmarks/results")
    refuse_file(out)  # before the run, not after it
    cfg = BenchConfig(out=out, quick=args.quick, trained=args.trained, tokens=args.tokens,
                      batches=batches, repeats=1 if args.quick else args.repeats,
                      e2e_repeats=args.e2e_repeats, mlx_whisper_repeats=args.mlx_whisper_repeats, sets=tuple(s for s in args.sets.split(",") if s),
                      set_limit=args.set_limit, chip=args.chip,
                      faster_whisper=not args.no_faster_whisper, mlx_whisper=not args.no_mlx_whisper,
                      drafts=args.drafts, speculative=not args.no_speculative)
    result = run_bench(cfg)
    paths = write_outputs(result, out)
    print((out / "bench.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
