"""``mlx-bald compress``: run a compression recipe in PyTorch, then convert to MLX."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mlx_bald.cli.arg_types import (fraction, nonneg_float, nonneg_int, number_list, open_fraction, positive_float,
                                    positive_int)
from mlx_bald.cli.data_args import SET_FORMS, add_column_args
from mlx_bald.hardware_names import DEVICES, PRECISIONS
from mlx_bald.short_context_options import ShortContextOptions as _Short
from mlx_bald.start_config import EMBED_INITS, STUDENT_LR, StartConfig

RECIPES = ("bald", "prune", "adaptwin", "short-context")
ALONE = ("short-context",)  # recipes that tune a finished model and join no '+' combination


def _recipe(text: str) -> tuple[str, ...]:
    parts = [x.strip() for x in text.split("+") if x.strip()]
    if not parts or any(x not in RECIPES for x in parts) or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"recipe {text!r}: one or more of {', '.join(RECIPES)} joined by '+'")
    if len(parts) > 1 and set(parts) & set(ALONE):
        raise argparse.ArgumentTypeError(f"recipe {text!r}: short-context tunes a finished model on its own; "
                                         "run it with --model set to the compressed model's folder")
    return tuple(x for x in RECIPES if x in parts)  # the order they are applied in


def _groups(text: str) -> list[list[int]]:
    """'0-1,2-3,4-5' -> [[0, 1], [2, 3], [4, 5]]; '' or 'none' -> [] (no merge)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        groups = [[int(x) for x in g.split("-")] for g in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"groups look like 0-1,2-3,4-5 (got {text!r})") from e
    if any(i < 0 for g in groups for i in g):
        raise argparse.ArgumentTypeError(f"groups look like 0-1,2-3,4-5 (got {text!r})")
    return groups


def _set_names(text: str) -> list[str]:
    """Comma-separated set names ('' for none)."""
    return [x for x in text.split(",") if x]


def _span(text: str) -> tuple[float, float] | None:
    if text.lower() == "none":
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds or none (got {text!r})") from e
    if not 0 < lo <= hi <= 30:
        raise argparse.ArgumentTypeError(f"window seconds {text!r}: need 0 < MIN <= MAX <= 30")
    return lo, hi


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compress", help="compress a Whisper model (PyTorch) and convert it to MLX",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run a compression recipe end to end on real speech, then write an MLX folder. "
                    "bald: BaldWhisper = decoder layer merging (alpha/beta searched on the dev split) + "
                    "low-rank tied embedding with feature distillation; with --lang the teacher is base "
                    "fine-tuned on that language, with --general the student is distilled from the "
                    "original base on unlabelled audio (keeps other languages). "
                    "adaptwin: AdaPTwin encoder compression = product-twin attention + low-rank FFN with LoRA, "
                    "fine-tuned layer by layer on base hidden states from unlabelled --lang train audio; "
                    "variable compression keeps the twins with the lowest measured error to reach "
                    "--compression. prune: drop the --prune lowest-scoring encoder layers and retrain the "
                    "layer after each cut as a bridge. Combinations join with '+', e.g. bald+adaptwin, "
                    "prune+adaptwin, bald+prune+adaptwin: bald makes the decoder side, prune then adaptwin "
                    "the encoder side (both trained against the base), and the two are joined into one "
                    "checkpoint whose spec lists everything. short-context: tune --model (stock or compressed) "
                    "so that clips up to --short-context-s seconds are encoded on their own frames instead of a "
                    "30 s window (learned encoder registers; every weight unchanged, long audio as before). "
                    "Needs the [compress] extra.")
    p.add_argument("--recipe", type=_recipe, default=("bald",),
                   help="bald, prune, adaptwin, or a '+' combination (applied as bald, prune, adaptwin); "
                        "or short-context, alone")
    p.add_argument("--model", default="whisper-base", help="model to compress")
    p.add_argument("--lang", default="cs", help="language of the fillets-<lang> training audio")
    data = p.add_argument_group("your own labelled data (bald recipe; instead of fillets-<lang>)")
    data.add_argument("--train", default=None, metavar="SET", help=f"training set: {SET_FORMS}")
    data.add_argument("--dev", default=None, metavar="SET",
                      help="held-out set for the alpha search and the stage checks (needed with --train)")
    data.add_argument("--test", default=None, metavar="SET",
                      help="set of the final table (default with --train: the --dev set)")
    add_column_args(data)
    hw = p.add_argument_group("hardware (every recipe; data-parallel under torchrun)")
    hw.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda, then mps, then cpu")
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches of --batch-size (--layer-batch-size) per optimiser step: a larger "
                        "effective batch in the same memory")
    p.add_argument("--log-dir", default=None,
                   help="write TensorBoard scalars (losses, learning rate) of every training stage here "
                        "(needs the tensorboard package)")
    hw.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="training arithmetic: fp32, or bf16/fp16 autocast (fp16 with a gradient scaler); "
                         "on a CPU without native bf16, bf16 is slower (benchmarks/README.md)")
    p.add_argument("--general", action="store_true",
                   help="general-purpose student: no labels, original base as teacher")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.json, student/, mlx/)")
    p.add_argument("--name", default=None, help="register the MLX result under this model name "
                   "(--general: whisper-base-bald, which then becomes the default model)")
    p.add_argument("--groups", type=_groups, default=None,
                   help="decoder layers merged together, e.g. 0-1,2-3,4-5; layers in no group stay as they "
                        "are (4-5 merges one pair); 'none': no merge, only the low-rank embedding; "
                        "default: adjacent pairs of the model's decoder layers (0-1,2-3,4-5 for base)")
    p.add_argument("--start", choices=("spaced", "pairs"), default="spaced",
                   help="how the shallower decoder starts: 'spaced' keeps maximally spaced teacher layers (the "
                        "last always; as many layers as the --groups merge leaves) and distils each locally, "
                        "optionally with a least-squares patch (measured: python -m benchmarks.recovery); 'pairs' "
                        "averages the --groups with a searched --alpha (the BaldWhisper paper's merge)")
    p.add_argument("--start-patch", choices=("none", "map", "refit"), default=StartConfig.patch,
                   help="--start spaced: closed-form patch of each kept layer's fc2 (none, map: a d x d map after "
                        "fc2, refit: fc2 refitted), folded into the weights")
    p.add_argument("--start-ridge", type=positive_float, default=StartConfig.ridge,
                   help="--start spaced: ridge of the patch fit (pull towards the unpatched layer)")
    p.add_argument("--local-steps", type=nonneg_int, default=StartConfig.local_steps,
                   help="--start spaced: steps of local (layer-wise) distillation before the end-to-end stage")
    p.add_argument("--start-fit-clips", type=positive_int, default=448,
                   help="--start spaced: training clips the patches and local steps are fitted on")
    p.add_argument("--alpha", type=fraction, default=None,
                   help="--start pairs: weight of the lower layer of each pair (beta = 1 - alpha); default: search")
    p.add_argument("--search-grid", type=number_list(fraction),
                   default=[0.2, 0.35, 0.5, 0.65, 0.8], help="alpha values tried by the search")
    p.add_argument("--search-steps", type=positive_int, default=40, help="training steps per search trial")
    p.add_argument("--rank", type=positive_int, default=96, help="rank of the factored token embedding")
    p.add_argument("--embed-init", choices=EMBED_INITS, default=EMBED_INITS[1],
                   help="start of the factored embedding: 'whiten' (default) = SVD weighted by the data (the head's "
                        "input second moment, token probabilities and frequencies); 'svd' = plain SVD of E (the "
                        "paper's); "
                        "'fit' = whiten, then both factors fitted to the dense head's outputs and lookups on the "
                        "recipe's data (no decoder step)")
    p.add_argument("--teacher-steps", type=nonneg_int, default=300,
                   help="training steps of the teacher fine-tune (0: none)")
    p.add_argument("--merge-steps", type=nonneg_int, default=1400, help="training steps of the merged student")
    p.add_argument("--embed-steps", type=nonneg_int, default=1200,
                   help="training steps of the low-rank embedding stage (a rerun on the same --out with "
                        "more steps continues the finished stage from its checkpoint)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-tokens", type=positive_int, default=64,
                   help="training targets are cut to this many tokens (prompt + text + end-of-text)")
    p.add_argument("--lr", type=positive_float, default=STUDENT_LR,
                   help="learning rate of the students' end-to-end stages (the older --start pairs runs used "
                        "1.5e-4: their averaged decoder starts far from its teacher)")
    p.add_argument("--teacher-lr", type=positive_float, default=1e-5, help="learning rate of the teacher fine-tune")
    p.add_argument("--max-train-clips", type=positive_int, default=None, help="fixed random subset of the train split")
    p.add_argument("--dev-clips", type=positive_int, default=None,
                   help="dev clips for the teacher's early stop, the search and the stage checks (default: the "
                        "whole dev split; 48 clips let a teacher fine-tune look better on dev than it was on test)")
    p.add_argument("--extra-audio", type=_set_names, default=None,
                   help="--general: more unlabelled audio sets, comma-separated ('' for none); SET@N takes N clips "
                        "of SET, SET@all all of it. Default: fillets-nl:train,pack:asterisk-en:train@all,"
                        "synth-en:1000@all (Dutch; real English prompts packed into 30 s windows; 1,000 windows of "
                        "synthetic English prose in three voice families). folder-<lang>:PATH adds your own "
                        "unlabelled audio (e.g. folder-en:/data/LibriSpeech)")
    p.add_argument("--extra-clips", type=positive_int, default=400,
                   help="--general: clips taken from each extra set without @N")
    p.add_argument("--hidden-weight", type=nonneg_float, default=None,
                   help="weight of hidden-state matching (merged layer -> last layer it replaced); "
                        "default 1 with --general, else 0")
    p.add_argument("--no-precompute", dest="precompute", action="store_false",
                   help="run the teacher and the cross-attention K/V projections at every training step instead of "
                        "caching them once (the old, slower path; for comparison)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    enc = p.add_argument_group("encoder recipes (prune, adaptwin)")
    enc.add_argument("--compression", type=open_fraction, default=0.5,
                     help="adaptwin: target fraction of the kept encoder layers' parameters removed")
    enc.add_argument("--prune", type=positive_int, default=None, help="prune: encoder layers to drop; None = 1 with a prune recipe")
    enc.add_argument("--attn-rank", type=positive_int, default=None,
                     help="adaptwin: per-head rank r_a + l_a (default 0.625 d_head, 40 for base)")
    enc.add_argument("--ffn-rank", type=positive_int, default=None,
                     help="adaptwin: FFN rank r_f + l_f (default 180/512 d_model, 180 for base)")
    enc.add_argument("--train-clips", type=positive_int, default=960,
                     help="unlabelled fillets-<lang> train clips whose base hidden states train the layers")
    enc.add_argument("--pack-seconds", type=_span, default=(5.0, 28.0),
                     help="pack train clips into encoder windows of this many seconds (MIN,MAX; 'none': one clip each)")
    enc.add_argument("--heldout-clips", type=positive_int, default=12, help="dev clips that measure layer errors")
    enc.add_argument("--layer-epochs", type=positive_int, default=3, help="epochs of layer-wise fine-tuning per twin")
    enc.add_argument("--bridge-epochs", type=positive_int, default=1, help="epochs per pruning bridge layer")
    enc.add_argument("--layer-lr", type=positive_float, default=3e-4, help="peak learning rate (linear decay)")
    enc.add_argument("--layer-batch-size", type=positive_int, default=4)
    enc.add_argument("--recover-epochs", type=nonneg_int, default=2,
                     help="epochs of end-to-end recovery of the built encoder (h0 -> encoder output); 0: layer-wise only")
    enc.add_argument("--recover-lr", type=positive_float, default=1e-4, help="peak learning rate of the recovery (linear decay)")
    enc.add_argument("--recover-kl", type=nonneg_float, default=0.0,
                     help="weight of a KL term in recovery: base's frozen decoder, teacher-forced on base's own "
                          "transcript of each window, reads the original and the compressed encoder output")
    enc.add_argument("--recover-audio", type=_set_names, default=[],
                     help="more unlabelled sets for the recovery only, comma-separated "
                          "(e.g. fillets-nl:train,tts-en:train; tts-en is synthetic English)")
    enc.add_argument("--train-audio", type=_set_names, default=["fillets-nl:train", "tts-en:train"],
                     help="more unlabelled sets for every encoder stage (layer-wise, bridges, recovery), "
                          "comma-separated ('' for none; SET@N: N clips of SET, SET@all: all of it; e.g. "
                          "synth-en:1000@all,pack:asterisk-en:train@all); other languages keep the encoder general; "
                          "folder-<lang>:PATH adds your own unlabelled audio (e.g. folder-en:/data/LibriSpeech)")
    enc.add_argument("--audio-clips", type=positive_int, default=400, help="clips taken from each --train/--recover-audio set")
    enc.add_argument("--init", choices=("whiten", "asvd"), default="whiten",
                     help="twin SVD initialisation: whitened by the inputs' second moments (SVD-LLM), "
                          "or scaled by their RMS (ASVD, FFN only)")
    short = p.add_argument_group("short-context recipe")
    short.add_argument("--short-context-s", type=_seconds, default=_Short.limit_s,
                       help="clips up to this long are encoded on their own frames (rounded up to 2 s)")
    short.add_argument("--registers", type=positive_int, default=_Short.registers,
                       help="learned encoder positions per layer that stand in for the 30 s window's padding")
    short.add_argument("--short-steps", type=positive_int, default=_Short.steps, help="training steps of the registers")
    short.add_argument("--short-lr", type=positive_float, default=_Short.lr, help="learning rate of the registers")
    short.add_argument("--short-audio", type=_set_names, default=list(_Short.audio),
                       help="labelled sets the registers train on (their clips up to --short-context-s)")
    short.add_argument("--short-clips", type=positive_int, default=_Short.clips_per_set,
                       help="clips taken from each --short-audio set")
    return p


def _seconds(text: str) -> float:
    value = positive_float(text)
    if value > 30:
        raise argparse.ArgumentTypeError(f"{text}: a short context is at most 30 s (Whisper's window)")
    return value


def _short_context(args) -> Path:
    from mlx_bald.compress.recipes.short_context import run_short_context

    opts = _Short(out=args.out, model=args.model, limit_s=args.short_context_s,
                  registers=args.registers, steps=args.short_steps, lr=args.short_lr,
                  batch_size=args.batch_size, audio=tuple(args.short_audio),
                  clips_per_set=args.short_clips, device=args.device,
                  precision=args.precision, seed=args.seed)
    try:
        return run_short_context(opts)
    except ValueError as e:
        from mlx_bald.errors import MlxBaldError
        raise MlxBaldError(str(e)) from e


def _encoder(args, out: Path):
    from mlx_bald.compress.recipes.encoder import EncoderOptions, run_encoder

    if args.prune is not None and "prune" not in args.recipe:
        raise argparse.ArgumentTypeError("--prune needs a recipe with prune (e.g. --recipe prune)")
    n_prune = (1 if args.prune is None else args.prune) if "prune" in args.recipe else 0
    opts = EncoderOptions(out=out, model=args.model, lang=args.lang, adaptwin="adaptwin" in args.recipe,
                          compression=args.compression, prune=n_prune, attn_rank=args.attn_rank,
                          ffn_rank=args.ffn_rank, train_clips=args.train_clips, pack_seconds=args.pack_seconds,
                          heldout_clips=args.heldout_clips,
                          epochs=args.layer_epochs, bridge_epochs=args.bridge_epochs, batch_size=args.layer_batch_size,
                          lr=args.layer_lr, recover_epochs=args.recover_epochs, recover_lr=args.recover_lr,
                          recover_kl=args.recover_kl, recover_audio=tuple(args.recover_audio), train_audio=tuple(args.train_audio),
                          audio_clips=args.audio_clips, init=args.init, grad_accum=args.grad_accum,
                          log_dir=args.log_dir, device=args.device, precision=args.precision, seed=args.seed)
    return run_encoder(opts, out / "student")


RUN_PARTS = ("work", "student", "mlx")  # what a run writes into --out (and into bald/, encoder/)
_LEFTOVER = re.compile(r"^(report\.tmp|\..+\.(partial|tmp|old)-.+)$")  # a killed run's temporary files


def check_run_folder(out: Path) -> None:
    """Refuse, before any work, an --out that is a file or holds files mlx-bald did not write
    (a run replaces its own student/ and mlx/). An earlier run's folder is resumed."""
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.fsutil import MARKER, check_replaceable, refuse_file

    refuse_file(out)
    if not out.is_dir():
        return
    try:
        if "options" in json.loads((out / "report.json").read_text()):
            return
    except (OSError, ValueError, TypeError):
        pass
    for name in sorted(p.name for p in out.iterdir()):
        if name in ("bald", "encoder"):
            check_run_folder(out / name)
        elif name in RUN_PARTS:
            check_replaceable(out / name)
        elif name != MARKER and not _LEFTOVER.match(name):
            raise MlxBaldError(f"--out {out} holds files that mlx-bald did not write ({name}): name a new or "
                               "empty folder, or the folder of an earlier compress run to resume it")


def _check_own_data(args) -> None:
    """Read the user's labelled sets once up front: a bad row is refused in seconds, before the
    model loads and before anything is written (the recipe reads them again, cheaply)."""
    from mlx_bald.data import load_set

    for spec in dict.fromkeys(s for s in (args.train, args.dev, args.test) if s):
        load_set(spec, audio_column=args.audio_column, text_column=args.text_column, language=args.language)


def run(args) -> int:
    check_run_folder(args.out)
    _check_own_data(args)
    try:
        from mlx_bald.compress.recipes.bald import run_bald
    except ImportError as e:
        from mlx_bald.errors import MlxBaldError
        raise MlxBaldError(f"compression needs the [compress] extra (torch, transformers): {e}") from e
    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.paths import models_dir

    from mlx_bald.compress.train.hardware import is_main
    from mlx_bald.errors import MlxBaldError

    recipe = tuple(args.recipe)
    _default_name(args, recipe)
    if recipe == ("short-context",):
        student = _short_context(args)
        return _finish(args, student, convert_checkpoint, models_dir) if is_main() else 0
    if recipe != ("bald",):
        if args.train:
            raise MlxBaldError("--train covers the bald recipe so far; the encoder recipes (prune, adaptwin) "
                               "train on unlabelled fillets-<lang> audio (plus --train-audio)")
        try:
            student = _combined(args, recipe)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise MlxBaldError(str(e)) from e
        if not is_main():  # rank 0 converts and registers
            return 0
        return _finish(args, student, convert_checkpoint, models_dir)
    opts = _bald_options(args, args.out)
    student = run_bald(opts)
    if not is_main():  # rank 0 converts and registers
        return 0
    return _finish(args, student, convert_checkpoint, models_dir)


def _default_name(args, recipe: tuple[str, ...]) -> None:
    """The general-purpose bald student registers as the project's default compressed model;
    nothing else may take that name (a language-tuned default would surprise English users)."""
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.hub import DEFAULT_COMPRESSED

    general = args.general and recipe == ("bald",)
    if args.name is None and general:
        args.name = DEFAULT_COMPRESSED
    elif args.name == DEFAULT_COMPRESSED and not general:
        raise MlxBaldError(f"--name {DEFAULT_COMPRESSED} is kept for the general-purpose student "
                           f"(--recipe bald --general): pick another name")


def _bald_options(args, out: Path):
    from mlx_bald.compress.recipes.bald import GENERAL_AUDIO, BaldOptions

    return BaldOptions(out=out, model=args.model, lang=args.lang, general=args.general,
                       groups=args.groups, alphas=None if args.alpha is None else [args.alpha],
                       search_grid=args.search_grid, search_steps=args.search_steps,
                       embedding_rank=args.rank, embed_init=args.embed_init, teacher_steps=args.teacher_steps,
                       merge_steps=args.merge_steps, embed_steps=args.embed_steps,
                       batch_size=args.batch_size, max_tokens=args.max_tokens, lr=args.lr,
                       teacher_lr=args.teacher_lr, start=args.start, start_patch=args.start_patch,
                       start_ridge=args.start_ridge, local_steps=args.local_steps, start_fit_clips=args.start_fit_clips,
                       max_train_clips=args.max_train_clips, dev_clips=args.dev_clips,
                       extra_audio=list(GENERAL_AUDIO) if args.extra_audio is None else args.extra_audio,
                       extra_clips=args.extra_clips, hidden_weight=args.hidden_weight,
                       precompute=args.precompute, train_set=args.train, dev_set=args.dev, test_set=args.test,
                       audio_column=args.audio_column, text_column=args.text_column, data_language=args.language,
                       device=args.device, precision=args.precision, grad_accum=args.grad_accum,
                       log_dir=args.log_dir, seed=args.seed)


def _combined(args, recipe: tuple[str, ...]) -> Path:
    """Encoder recipes alone (out/student), or bald in out/bald + encoder in out/encoder,
    joined into out/student."""
    if "bald" not in recipe:
        return _encoder(args, args.out)
    from mlx_bald.compress.recipes.bald import run_bald
    from mlx_bald.compress.recipes.combine import combine
    from mlx_bald.torch_ref import load_torch_model

    decoder_side = run_bald(_bald_options(args, args.out / "bald"))
    encoder_side = _encoder(args, args.out / "encoder")
    from mlx_bald.compress.train.hardware import barrier, is_main

    if is_main():
        combine(decoder_side, encoder_side, args.out / "student", base=load_torch_model(args.model))
    barrier()
    return args.out / "student"


def _finish(args, student: Path, convert_checkpoint, models_dir) -> int:
    mlx_dir = convert_checkpoint(student, args.out / "mlx")
    name = _vetted_name(args.name, args.out / "report.json")
    if name:
        convert_checkpoint(student, models_dir() / name / "mlx")
    print(mlx_dir)
    print(f"mlx-bald: compressed {args.model} -> {student} (torch) and {mlx_dir} (MLX); "
          f"report: {args.out / 'report.json'}" + (f"; registered as {name}" if name else ""), file=sys.stderr)
    return 0


def _vetted_name(name: str | None, report: Path) -> str | None:
    """A specialised student is registered under ``name`` only if it is not worse than the stock
    model it came from on its language's test split; the general student (the default model)
    only if it met every general target of its report (recipes/bald_table.GENERAL_TARGETS: base's
    English on LibriVox and Asterisk, and Czech). Otherwise it is registered as NAME-unvetted,
    so that nobody gets a worse model by running the recipe."""
    from mlx_bald.compress.recipes.bald_table import GENERAL_TARGETS
    from mlx_bald.hub import DEFAULT_COMPRESSED

    if not name:
        return name
    data = json.loads(report.read_text()) if report.exists() else {}
    rows = {r["model"]: r for r in data.get("table", [])}
    base = rows.get(data.get("options", {}).get("model", "whisper-base"), {})  # the source model's row
    got = rows.get("merged+lowrank-embedding") or rows.get("lowrank-embedding") or {}  # the final student
    why = []
    tests = {s: t for s, t in data.get("test", {}).items() if isinstance(t, dict) and "wer_short" in t}
    why += [f"on {s} its short context's WER ({t['wer_short']}) is over 1 point worse than the full window's "
            f"({t['wer_full']})" for s, t in tests.items() if t["wer_short"] > t["wer_full"] + 1]  # short-context
    if name != DEFAULT_COMPRESSED and "wer_test" in base and "wer_test" in got and got["wer_test"] > base["wer_test"]:
        why.append(f"its test WER ({got['wer_test']}) is worse than stock base's ({base['wer_test']})")
    if name == DEFAULT_COMPRESSED:
        targets = data.get("targets", {})
        why += [targets[t]["says"] if t in targets else f"its {t} target was not measured"
                for t in GENERAL_TARGETS if not targets.get(t, {}).get("met")]
    if not why:
        return name
    print(f"mlx-bald: the student is registered as {name}-unvetted, NOT as {name}: " + "; ".join(why), file=sys.stderr)
    return f"{name}-unvetted"
