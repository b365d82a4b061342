"""``mlx-bald compress``: run a compression recipe in PyTorch, then convert to MLX."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RECIPES = ("bald",)


def _groups(text: str) -> list[list[int]]:
    try:
        return [[int(x) for x in g.split("-")] for g in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"groups look like 0-1,2-3,4-5 (got {text!r})") from e


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compress", help="compress a Whisper model (PyTorch) and convert it to MLX",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run a compression recipe end to end on real speech, then write an MLX folder. "
                    "bald: BaldWhisper = decoder layer merging (alpha/beta searched on the dev split) + "
                    "low-rank tied embedding with feature distillation; with --lang the teacher is base "
                    "fine-tuned on that language, with --general the student is distilled from the "
                    "original base on unlabelled audio (keeps other languages). Needs the [compress] extra.")
    p.add_argument("--recipe", choices=RECIPES, default="bald")
    p.add_argument("--model", default="whisper-base", help="model to compress")
    p.add_argument("--lang", default="cs", help="language of the fillets-<lang> training audio")
    p.add_argument("--general", action="store_true",
                   help="general-purpose student: no labels, original base as teacher")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.json, student/, mlx/)")
    p.add_argument("--name", default=None, help="register the MLX result under this model name")
    p.add_argument("--groups", type=_groups, default=[[0, 1], [2, 3], [4, 5]],
                   help="decoder layers merged together, e.g. 0-1,2-3,4-5")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the lower layer of each pair (beta = 1 - alpha); default: search")
    p.add_argument("--search-grid", type=lambda s: [float(x) for x in s.split(",")],
                   default=[0.2, 0.35, 0.5, 0.65, 0.8], help="alpha values tried by the search")
    p.add_argument("--search-steps", type=int, default=40, help="training steps per search trial")
    p.add_argument("--rank", type=int, default=96, help="rank of the factored token embedding")
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--merge-steps", type=int, default=400)
    p.add_argument("--embed-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of the students")
    p.add_argument("--teacher-lr", type=float, default=1e-5, help="learning rate of the teacher fine-tune")
    p.add_argument("--max-train-clips", type=int, default=None, help="fixed random subset of the train split")
    p.add_argument("--dev-clips", type=int, default=48, help="dev clips for the search and stage checks")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> int:
    try:
        from mlx_bald.compress.recipe_bald import BaldOptions, run_bald
    except ImportError as e:
        from mlx_bald.errors import MlxBaldError
        raise MlxBaldError(f"compression needs the [compress] extra (torch, transformers): {e}") from e
    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.paths import models_dir

    opts = BaldOptions(out=args.out, model=args.model, lang=args.lang, general=args.general,
                       groups=args.groups, alphas=None if args.alpha is None else [args.alpha] * len(args.groups),
                       search_grid=args.search_grid, search_steps=args.search_steps,
                       embedding_rank=args.rank, teacher_steps=args.teacher_steps,
                       merge_steps=args.merge_steps, embed_steps=args.embed_steps,
                       batch_size=args.batch_size, lr=args.lr, teacher_lr=args.teacher_lr, max_train_clips=args.max_train_clips,
                       dev_clips=args.dev_clips, seed=args.seed)
    student = run_bald(opts)
    mlx_dir = convert_checkpoint(student, args.out / "mlx")
    if args.name:
        convert_checkpoint(student, models_dir() / args.name / "mlx")
    print(mlx_dir)
    print(f"mlx-bald: compressed {args.model} -> {student} (torch) and {mlx_dir} (MLX); "
          f"report: {args.out / 'report.json'}", file=sys.stderr)
    return 0
