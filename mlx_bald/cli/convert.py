"""``mlx-bald convert``: a (compressed) transformers checkpoint -> an MLX model folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlx_bald.spec import QUANT_BITS, QUANT_GROUP_SIZES


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert a (compressed) PyTorch checkpoint into an MLX model folder",
        description="Rewrite a transformers Whisper checkpoint - stock, or compressed by "
                    "`mlx-bald compress` (its CompressionSpec travels in config.json) - as an MLX "
                    "folder: merged decoder layers, factored embedding, low-rank attention and FFN "
                    "become native MLX modules. The folder is written to a temporary directory, "
                    "checked tensor by tensor against the spec, and renamed into place at the end.")
    p.add_argument("checkpoint", help="transformers folder (config.json + model.safetensors), or a model name")
    p.add_argument("--out", default=None, help="output folder (default: the cache, under --name)")
    p.add_argument("--name", default=None,
                   help="register the result under this name, usable as `--model NAME` everywhere")
    p.add_argument("--quantize", type=int, choices=QUANT_BITS, default=None,
                   help="quantize linear layers with MLX to this many bits; recorded in the spec")
    p.add_argument("--group-size", type=int, choices=QUANT_GROUP_SIZES, default=64, help="quantization group size (default 64)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="stored float type (default float16; MLX casts at load)")
    p.add_argument("--head", default=None, metavar="shortlist[:R:N]",
                   help="add an exact shortlist output head (no training): logits previewed at rank R "
                        "through the SVD of the tied embedding, the top N and every special/timestamp "
                        "token rescored with full rows (default 256:4096: the smallest measured to keep "
                        "every English greedy transcript, not every Czech one; see README). CHECKPOINT may "
                        "then also be an MLX folder or a model name such as whisper-base; the embedding must be full")
    return p


def run(args) -> int:
    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.fsutil import check_replaceable
    from mlx_bald.hub import resolve_model
    from mlx_bald.paths import models_dir

    if args.out is None and args.name is None:
        raise MlxBaldError("say where to write: --out DIR and/or --name NAME")
    out = check_replaceable(Path(args.out) if args.out else models_dir() / args.name / "mlx")  # before any work
    if Path(args.checkpoint).exists() and Path(args.checkpoint).resolve() == out.resolve():
        raise MlxBaldError(f"--out {out} is the checkpoint itself: name another folder")
    if args.head is not None:
        from converters.shortlist_head import add_shortlist_head, parse_head

        try:
            head = parse_head(args.head)
        except ValueError as e:
            raise MlxBaldError(str(e)) from None
        if args.quantize:
            raise MlxBaldError("--head and --quantize do not combine: the head rescores with float rows")
        src = resolve_model(args.checkpoint, "mlx")  # a name, an MLX folder or a transformers folder
        add_shortlist_head(src, out, head)
    else:
        src = Path(args.checkpoint)
        if not src.exists():
            src = resolve_model(args.checkpoint, "hf")
        convert_checkpoint(src, out, args.quantize, args.group_size, args.dtype)
    if args.name and args.out:  # also register under the name
        import shutil
        shutil.copytree(out, models_dir() / args.name / "mlx", dirs_exist_ok=True)
    print(out)
    print(f"mlx-bald: converted {src} -> {out}", file=sys.stderr)
    return 0
