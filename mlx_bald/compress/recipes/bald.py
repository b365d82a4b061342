"""The BaldWhisper recipe, end to end: (teacher fine-tune) -> alpha/beta search -> merged
student -> low-rank tied embedding with feature distillation -> compressed checkpoint.

Two students from one recipe:
- language-specialised (``lang`` given, ``general=False``): teacher = base fine-tuned on the
  language's train split (decoder only); student trained with CE + KL + feature loss;
- general-purpose (``general=True``): no labels, no fine-tuned teacher. The student is
  distilled against the ORIGINAL base on unlabelled audio, whose targets are base's own
  greedy transcripts (sequence-level KD) plus KL on base's distributions at every step, plus
  hidden-state matching (each merged layer reproduces the output of the last layer it
  replaced). Its audio is the language's train split plus ``extra_audio`` (default: Dutch
  speech and synthetic English), so that base's other languages are seen in training.
Every stage checkpoints under ``out/work`` and is skipped when already done (resume).
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch

from mlx_bald.compress.train.dev_checks import DevChecks, train_checked
from mlx_bald.compress.train.data import (batches_from_cache, counted, ensure_encoder_cache, set_subset,
                                    subset, token_rows, tokenizer)
from mlx_bald.compress.train.embedding_fit import collect_head_data, fit_factored_embedding
from mlx_bald.compress.train.distill import DistillConfig, load_cached_encoder_output, train_decoder
from mlx_bald.compress.ops.embedding import collect_embedding_stats, factorize_embedding
from mlx_bald.compress.train.greedy import dev_cross_entropy, dev_wer, greedy_pseudo_labels
from mlx_bald.compress.train.hardware import barrier, check_precision, init_from_env, is_main, main_first, resolve_device
from mlx_bald.compress.ops.merge import adjacent_pairs
from mlx_bald.compress.recipes.bald_table import final_table
from mlx_bald.compress.recipes.skeleton import RecipeRun
from mlx_bald.compress.recipes.start import build_start
from mlx_bald.start_config import EMBED_INITS, STUDENT_LR, StartConfig
from mlx_bald.compress.ops.model import apply_spec, count_parameters, record_spec, save_compressed
from mlx_bald.compress.train.targets import Precomputed
from mlx_bald.data import cache_key
from mlx_bald.errors import MlxBaldError
from mlx_bald.spec import CompressionSpec, MergeGroup


@dataclass
class BaldOptions:
    out: Path
    model: str = "whisper-base"
    lang: str = "cs"
    general: bool = False
    groups: list[list[int]] | None = None  # None: pairs of the model's own decoder layers (default_groups)
    alphas: list[float] | None = None  # weight of the LOWER layer of each pair (one: every pair); None -> search
    search_grid: list[float] = field(default_factory=lambda: [0.2, 0.35, 0.5, 0.65, 0.8])
    search_steps: int = 40
    embedding_rank: int = 96
    # "whiten": data-aware SVD (EmbeddingStats), the measured best start (dev CE 4.06 against the
    # plain SVD's 9.79 at rank 96 on base); "svd": plain SVD of E (the paper's); "fit": whiten, then
    # both factors fitted locally to the dense head (train/embedding_fit.py): overfits, measured worse
    embed_init: str = EMBED_INITS[1]
    embed_calib_batches: int = 20
    embed_fit_steps: int = 300
    teacher_steps: int = 300
    merge_steps: int = 1400  # measured: 700 steps left the merged student at 1.17x the teacher
    embed_steps: int = 1200  # measured: 400 steps lost the merge's gain again, 1,200 kept it
    batch_size: int = 8
    max_tokens: int = 64  # longer targets are cut: the 51,865-wide vocabulary projection dominates a step
    lr: float = STUDENT_LR  # the end-to-end student stages (start_config.py: measured)
    teacher_lr: float = 1e-5  # the usual Whisper fine-tuning rate: higher damages base here
    # how the depth-reduced decoder starts (recipes/start.py, measured by benchmarks.recovery):
    # "spaced" keeps maximally spaced teacher layers (the last always) and distils each locally,
    # with an optional least-squares patch; "pairs" averages adjacent pairs with a searched alpha
    start: str = "spaced"
    start_patch: str = StartConfig.patch
    start_ridge: float = StartConfig.ridge
    local_steps: int = StartConfig.local_steps
    start_fit_clips: int = 448
    max_train_clips: int | None = None
    # general student only: more unlabelled audio (set names, SPEC@N for N clips of one set,
    # SPEC@all for all of it) and clips per set otherwise
    extra_audio: list[str] = field(default_factory=lambda: list(GENERAL_AUDIO))
    extra_clips: int | None = 400
    hidden_weight: float | None = None  # None: 1.0 for the general student, 0 for the specialised
    dev_clips: int | None = None  # None: the whole dev split (a 48-clip dev split misjudged a teacher)
    # compute the constant inputs of training once (cross-attention K/V, the teacher's targets;
    # compress/train/targets.py) instead of at every step; off = the live path, for comparison
    precompute: bool = True
    # labelled data of your own (load_set specs: a manifest, an audiofolder, hf:NAME:SPLIT, a
    # built-in set); None: the fillets-<lang> split. Columns/language as in mlx_bald.data.load_set.
    train_set: str | None = None
    dev_set: str | None = None
    test_set: str | None = None
    audio_column: str | None = None
    text_column: str | None = None
    data_language: str | None = None
    device: str = "auto"  # auto: cuda, then mps, then cpu (hardware.resolve_device)
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast
    grad_accum: int = 1  # micro-batches of batch_size per optimiser step
    log_dir: str | None = None  # TensorBoard scalars of every training stage
    seed: int = 0

    def set_spec(self, split: str) -> str:
        """The load_set spec of a split (train, dev, test); your own data's final table is on
        its test set, or on its dev set when it has none."""
        if split == "test" and self.train_set and not self.test_set:
            return self.set_spec("dev")
        return getattr(self, f"{split}_set") or f"fillets-{self.lang}:{split}"


GENERAL_AUDIO = ("fillets-nl:train", "pack:asterisk-en:train@all", "synth-en:1000@all")
PSEUDO_LABEL_TOKENS = 224  # Whisper's own limit per window: a packed 30 s window needs more than 120


def default_groups(n_layers: int) -> list[list[int]]:
    """Adjacent pairs of the decoder's layers (0-1, 2-3, ...); an odd last layer stays alone."""
    return [g.layers for g in adjacent_pairs(n_layers) if len(g.layers) == 2]


def _log(msg: str) -> None:
    print(f"[bald] {msg}", file=sys.stderr, flush=True)


class _Run(RecipeRun):
    """Shared state: data, caches, the report written after every stage (skeleton.RecipeRun)."""

    def __init__(self, o: BaldOptions):
        from mlx_bald.torch_ref import load_torch_model

        self.o, self.device = o, resolve_device(o.device)
        check_precision(o.precision)
        init_from_env(self.device)  # under torchrun: join the ranks (a no-op otherwise)
        super().__init__(o.out, o)
        self.base = copy.deepcopy(load_torch_model(o.model)).to(self.device).eval()
        if o.groups is None:
            o.groups = default_groups(self.base.config.decoder_layers)
            self.set_options(o)
        sets = {s: o.set_spec(s) for s in ("train", "dev")}
        self.train = subset(self.load(sets["train"]), o.max_train_clips, o.seed)
        self.dev = self.load(sets["dev"])[: o.dev_clips]
        self.caches = {}
        for split, clips in (("dev", self.dev), ("train", self.train)):
            with main_first():  # rank 0 encodes, the other ranks find its cache
                self.caches[split] = ensure_encoder_cache(self.base, o.model, sets[split], clips)
        self.cache_of = {c.id: self.caches["train"] for c in self.train}
        self.audio_sets = {sets["train"]: len(self.train)}
        if o.general:
            for entry in o.extra_audio:
                name, n = counted(entry, o.extra_clips)
                extra = set_subset(name, n, o.seed)
                with main_first():
                    folder = ensure_encoder_cache(self.base, o.model, cache_key(name), extra)
                self.train += extra
                self.audio_sets[name] = len(extra)
                self.cache_of |= {c.id: folder for c in extra}
        self.pre = Precomputed(self.base, self.cache_of, self.work) if o.precompute else None

    def load(self, spec: str) -> list:
        from mlx_bald.data import load_set

        o = self.o
        return load_set(spec, audio_column=o.audio_column, text_column=o.text_column, language=o.data_language)

    def batches(self, texts=None, seed_offset=0, student=None, teacher=None, cfg: DistillConfig | None = None):
        """Training batches; for a ``student`` trained with ``cfg`` (and ``precompute``) they carry
        its cross-attention K/V and, when ``cfg`` reads the teacher, the teacher's cached targets."""
        extras, states = [], True
        if student is not None and cfg is not None and self.pre is not None:
            hidden = sorted({t for _, t in cfg.hidden_map}) if cfg.hidden_weight > 0 else []
            needs_teacher = cfg.kd_weight > 0 or bool(hidden)
            rows = token_rows(self.train, texts, self.base.config.vocab_size, self.o.max_tokens)
            with main_first():  # rank 0 builds the K/V and target caches
                extras, states = self.pre.extras(student, teacher if needs_teacher else None, rows,
                                             "pseudo-labels" if texts else "labels", hidden)
        return batches_from_cache(self.train, self.cache_of, self.o.batch_size,
                                  self.o.seed + seed_offset, texts=texts, vocab=self.base.config.vocab_size,
                                  max_tokens=self.o.max_tokens, extras=extras, encoder_states=states)

    def cfg(self, steps: int, lr: float | None = None, **kw) -> DistillConfig:
        return DistillConfig(lr=lr or self.o.lr, steps=steps, seed=self.o.seed, precision=self.o.precision,
                             accumulate=self.o.grad_accum, log_dir=self.o.log_dir,
                             checkpoint_every=max(50, steps // 4), **kw)

    def student_cfg(self, steps: int, spec: CompressionSpec, **kw) -> DistillConfig:
        """A merged student's training: hidden-state matching of merged layer g to the
        teacher's last layer of group g (general student by default)."""
        weight = self.o.hidden_weight if self.o.hidden_weight is not None else (1.0 if self.o.general else 0.0)
        pairs = tuple((g, grp.layers[-1]) for g, grp in enumerate(spec.decoder_merge))
        return self.cfg(steps, hidden_weight=weight, hidden_map=pairs if weight > 0 else (), **kw)

    def dev_wer(self, model) -> float:
        """Dev WER as users decode (greedy with the temperature fallback): what the guards judge by."""
        return round(dev_wer(model, self.dev, self.caches["dev"], decode="fallback"), 2)

    def dev_ce(self, model) -> float:
        return round(dev_cross_entropy(model, self.dev, self.caches["dev"], max_tokens=self.o.max_tokens), 4)

    def agreement(self, model, teacher, clips, cache, name: str) -> float:
        """% of the teacher's greedy tokens on ``clips`` that ``model`` reproduces, teacher-forced."""
        from mlx_bald.compress.train.decoder_states import teacher_forced_scores, token_batches

        ids = [c.id for c in clips]
        with main_first():
            labels = greedy_pseudo_labels(
                teacher, ids, {c.id: c.language for c in clips},
                lambda chunk: torch.stack([load_cached_encoder_output(cache, i) for i in chunk]),
                self.work / f"teacher_labels-{name}.json", f"teacher tokens ({name})", max_new_tokens=PSEUDO_LABEL_TOKENS)
        vocab = self.base.config.vocab_size
        batches = token_batches(clips, cache, labels, vocab, PSEUDO_LABEL_TOKENS, batch_size=16)
        return teacher_forced_scores(model, batches, tokenizer(vocab).eot)["agreement"]


def _pseudo_labels(run: _Run) -> dict[str, str]:
    """The original base's own greedy transcripts of the training audio (no labels used),
    in each clip's language. Kept beside each set's encoder cache (saved after every batch),
    so every run and every rung of a ladder that reads a clip shares its label."""
    by_folder: dict[Path, list] = {}
    for c in run.train:
        by_folder.setdefault(run.cache_of[c.id], []).append(c)
    labels: dict[str, str] = {}
    with main_first():
        for folder, clips in by_folder.items():
            labels |= greedy_pseudo_labels(
                run.base, [c.id for c in clips], {c.id: c.language for c in clips},
                lambda chunk, f=folder: torch.stack([load_cached_encoder_output(f, i) for i in chunk]),
                folder / f"greedy_labels-{PSEUDO_LABEL_TOKENS}.json", f"pseudo-labels ({folder.name})",
                max_new_tokens=PSEUDO_LABEL_TOKENS)
    return {c.id: labels[c.id] for c in run.train}


TEACHER_CHECKS = DevChecks(evals=6, patience=2)  # dev checks over the teacher fine-tune


def _teacher(run: _Run):
    """Decoder-only fine-tune of base on the language's train split (CE), stopped early on dev
    cross-entropy (the best check is kept) and handed on only if its greedy dev WER is not
    worse than base's; otherwise base is the teacher, and the report and log say so."""
    o = run.o
    if o.general:
        return run.base
    done = run.work / "teacher"
    if run.report.get("teacher", {}).get("used") == "base":
        return run.base
    if (done / "model.safetensors").exists():
        from transformers import WhisperForConditionalGeneration
        return WhisperForConditionalGeneration.from_pretrained(done, dtype=torch.float32).to(run.device).eval()
    _log(f"teacher fine-tune: up to {o.teacher_steps} steps on {len(run.train)} clips, checked on "
         f"{len(run.dev)} dev clips")
    teacher, best_dir = copy.deepcopy(run.base), run.work / "teacher-best"
    # every dev check, base itself first (step 0): the best is always one of them, also on a resume
    history = run.report.get("teacher_history") or [{"step": 0, "dev_ce": run.dev_ce(run.base)}]

    def train_to(target: int) -> None:
        cfg = run.cfg(target, o.teacher_lr, kd_weight=0.0, feature_weight=0.0, learn_temperature=False)
        train_decoder(teacher, run.base, run.batches(student=teacher, cfg=cfg), cfg, run.work / "teacher-ckpt")

    def save_best() -> None:
        if is_main():
            teacher.save_pretrained(best_dir)
        barrier()

    best = train_checked(train_to, lambda: {"dev_ce": run.dev_ce(teacher)}, save_best, o.teacher_steps, history,
                         lambda h: run.save_report(teacher_history=h), TEACHER_CHECKS, lambda m: _log(f"teacher: {m}"))
    return _guard_teacher(run, best, best_dir)


def _guard_teacher(run: _Run, best: dict, best_dir: Path):
    """The fine-tuned teacher if its best check beats base on dev (cross-entropy, then greedy
    WER); else base, said plainly."""
    base_wer = run.report["base"]["dev_wer"]
    teacher, why = None, f"no check beat base's dev cross-entropy ({best['dev_ce']})"
    if best["step"] > 0:
        from transformers import WhisperForConditionalGeneration
        teacher = WhisperForConditionalGeneration.from_pretrained(best_dir, dtype=torch.float32).to(run.device).eval()
        wer = run.dev_wer(teacher)
        why = f"its dev WER {wer} is worse than base's {base_wer}" if wer > base_wer else ""
    n = len(run.dev)
    if why:
        _log(f"teacher REFUSED: {why} ({n} dev clips); base is the teacher")
        run.save_report(teacher={"used": "base", "why": why, "dev_clips": n, "dev_wer": base_wer})
        return run.base
    if is_main():
        teacher.save_pretrained(run.work / "teacher")
    barrier()
    run.save_report(teacher={"used": "fine-tuned", "dev_wer": wer, "dev_ce": best["dev_ce"], "steps": best["step"],
                             "dev_clips": n, "params": count_parameters(teacher)})
    return teacher


def _merge_spec(o: BaldOptions, alphas: list[float], n_layers: int) -> CompressionSpec:
    """Pairs of ``o.groups`` merged with (alpha, 1 - alpha); decoder layers in no group stay
    as they are (groups of one), so ``--groups 4-5`` merges one pair only. No groups: no merge."""
    if not o.groups:
        return CompressionSpec(recipe=["bald"])
    merged = {g[0]: MergeGroup(list(g), [a, 1.0 - a]) for g, a in zip(o.groups, alphas)}
    covered = {i for g in o.groups for i in g}
    for i in range(n_layers):
        if i not in covered:
            merged[i] = MergeGroup([i], [1.0])
    return CompressionSpec(decoder_merge=[merged[i] for i in sorted(merged)], recipe=["bald"])


def _search(run: _Run, teacher, texts) -> list[float]:
    """Shared alpha per pair over the grid: a short distillation per trial, ranked by dev
    cross-entropy (merged students start near-random, so short-trained greedy WER is 100 for
    all of them and cannot rank them); every trial kept in the report."""
    o = run.o
    if o.alphas is not None or not o.groups:  # one given alpha serves every pair
        return list(o.alphas or []) * (len(o.groups) if o.alphas and len(o.alphas) == 1 else 1)
    trials = run.report.get("search", [])
    tried = {t["alpha"] for t in trials}
    for alpha in o.search_grid:
        if alpha in tried:
            continue
        trial = _merge_spec(o, [alpha] * len(o.groups), run.base.config.decoder_layers)
        student = apply_spec(copy.deepcopy(teacher), trial)
        untrained = run.dev_ce(student)
        cfg = run.student_cfg(o.search_steps, trial)
        train_decoder(student, teacher, run.batches(texts, 1, student, teacher, cfg), cfg, None)
        trials.append({"alpha": alpha, "beta": round(1 - alpha, 4), "dev_ce_untrained": untrained,
                       "dev_ce": run.dev_ce(student), "steps": o.search_steps})
        _log(f"search: alpha={alpha} -> dev CE {trials[-1]['dev_ce']} (untrained {untrained})")
        run.save_report(search=trials)
    best = min(trials, key=lambda t: t["dev_ce"])
    return [best["alpha"]] * len(o.groups)


def _started(run: _Run, teacher, texts) -> tuple[torch.nn.Module, CompressionSpec]:
    """The start stage (recipes/start.py) on the first ``start_fit_clips`` training clips,
    teacher-forced on the training targets; saved under work/start, so a rerun reuses it."""
    from mlx_bald.compress.ops.model import load_compressed

    o, folder = run.o, run.work / "start"
    if (folder / "model.safetensors").is_file():
        student, spec = load_compressed(folder)
        return student.to(run.device), spec
    epoch = run.batches(texts, 4)(0)
    batches = [epoch[i] for i in range(min(len(epoch), -(-o.start_fit_clips // o.batch_size)))]
    # the local rate stays the measured one (StartConfig), not the end-to-end stages' --lr
    cfg = StartConfig(layers="spaced", patch=o.start_patch, ridge=o.start_ridge, local_steps=o.local_steps)
    n_keep = run.base.config.decoder_layers - sum(len(g) - 1 for g in o.groups)  # as many blocks as the merge
    _log(f"start: {n_keep} of {run.base.config.decoder_layers} decoder layers, spaced, patch {o.start_patch}, "
         f"{o.local_steps} local steps, on {len(batches)} batches")
    t0 = time.time()
    student, spec, report = build_start(teacher, n_keep, batches, cfg, run.work)
    seconds = round(time.time() - t0)
    if is_main():
        save_compressed(student, spec, folder)
    barrier()
    run.save_report(start=report | {"seconds": seconds, "dev_ce": run.dev_ce(student),
                                    "dev_agreement": run.agreement(student, teacher, run.dev, run.caches["dev"], "dev")})
    return student, spec


def run_bald(o: BaldOptions) -> Path:
    """Run the recipe; returns the final compressed checkpoint folder (``out/student``)."""
    if o.embed_init not in EMBED_INITS:
        raise MlxBaldError(f"embed_init must be one of {', '.join(EMBED_INITS)}, not {o.embed_init!r}")
    if o.start not in ("spaced", "pairs"):
        raise MlxBaldError(f"start must be 'spaced' or 'pairs', not {o.start!r}")
    if o.start == "spaced" and o.alphas is not None:
        raise MlxBaldError("--alpha weighs averaged pairs: add --start pairs (the default start keeps spaced layers)")
    if o.train_set and not o.dev_set:
        raise MlxBaldError("--train needs --dev: a held-out labelled set for the alpha search and the stage checks")
    run = _Run(o)
    run.save_report(base={"params": count_parameters(run.base), "dev_wer": run.report.get("base", {}).get("dev_wer")
                          or run.dev_wer(run.base)})
    texts = _pseudo_labels(run) if o.general else None
    teacher = _teacher(run)
    started = None
    if o.start == "spaced" and o.groups:
        started, spec = _started(run, teacher, texts)
        alphas = [g.weights for g in spec.decoder_merge]
    else:
        alphas = _search(run, teacher, texts)
        spec = _merge_spec(o, alphas, run.base.config.decoder_layers)
    spec.notes = {"teacher": o.model if o.general else f"{o.model} fine-tuned on {o.set_spec('train')}",
                  "student": "general" if o.general else f"specialised-{o.lang}", "seed": o.seed,
                  "train_clips": len(run.train), "train_audio": run.audio_sets}

    merged_dir, final = run.work / "merged", Path(o.out) / "student"
    if spec.decoder_merge and _must_train(merged_dir, run.work / "merged-ckpt", o.merge_steps, "--merge-steps",
                                          can_continue=not (final / "model.safetensors").exists(),
                                          requested=run.report.get("merged", {}).get("requested_steps")):
        _log(f"merged student: alphas {alphas}, up to {o.merge_steps} steps, checked on dev")
        student = copy.deepcopy(started) if started is not None else apply_spec(copy.deepcopy(teacher), spec)
        t0 = time.time()

        def train_merged(target: int) -> None:
            cfg = run.student_cfg(target, spec)
            train_decoder(student, teacher, run.batches(texts, 2, student, teacher, cfg), cfg, run.work / "merged-ckpt")

        best = _checked_stage(run, "merged", student, spec, o.merge_steps, train_merged, merged_dir)
        run.save_report(merged=best | {"params": count_parameters(student), "alphas": alphas,
                                       "train_seconds": round(time.time() - t0)})
    from mlx_bald.compress.ops.model import load_compressed

    if _must_train(final, run.work / "embed-ckpt", o.embed_steps, "--embed-steps",
                   requested=run.report.get("student", {}).get("requested_steps")):
        # embedding only: the student starts as the teacher
        student, spec = load_compressed(merged_dir) if spec.decoder_merge else (copy.deepcopy(teacher), spec)
        student.to(run.device)
        _log(f"rank-{o.embedding_rank} embedding ({o.embed_init} init): up to {o.embed_steps} steps with "
             "feature distillation, checked on dev")
        resuming = (run.work / "embed-ckpt" / "distill_checkpoint.pt").is_file()
        started = run.report.get("embedding_init", {}).get("init", "svd")  # reports older than the option: svd
        if resuming and started != o.embed_init:
            raise MlxBaldError(f"{run.work / 'embed-ckpt'} was started with --embed-init {started}; "
                               f"rerun with it, or use a new --out for {o.embed_init}")
        stats = head = None
        if o.embed_init in ("whiten", "fit") and not resuming:  # calibrated on the stage's own first batches
            calib = list(islice(run.batches(texts, 3)(0), o.embed_calib_batches))
            stats = collect_embedding_stats(student, calib)
            head = collect_head_data(student, calib) if o.embed_init == "fit" else None
        dense = student.model.decoder.embed_tokens.weight.detach() if head is not None else None  # the fit's target
        emb = factorize_embedding(student, o.embedding_rank, stats)
        fit = fit_factored_embedding(emb, dense, head, o.embed_fit_steps, seed=o.seed) if head is not None else {}
        del dense
        spec.embedding_rank = o.embedding_rank
        spec.notes["embedding_init"] = o.embed_init
        record_spec(student, spec)
        if not resuming:
            run.save_report(embedding_init={"init": o.embed_init, "dev_ce_untrained": run.dev_ce(student)} | fit)
        t0 = time.time()

        def train_embedding(target: int) -> None:
            cfg = run.student_cfg(target, spec, feature_weight=0.1)
            train_decoder(student, teacher, run.batches(texts, 3, student, teacher, cfg), cfg, run.work / "embed-ckpt")

        best = _checked_stage(run, "student", student, spec, o.embed_steps, train_embedding, final)
        run.save_report(student=best | {"params": count_parameters(student), "spec": spec.to_dict(),
                                        "train_seconds": round(time.time() - t0)})
    if is_main():  # the other ranks are done: their training share is in the checkpoints
        final_table(run, teacher, final)
    return final


def _checked_stage(run: _Run, name: str, student: torch.nn.Module, spec: CompressionSpec, steps: int,
                   train_to, out: Path) -> dict:
    """An end-to-end student stage in dev-checked segments (train/dev_checks.py): the best
    check (possibly the stage's start) is kept under work/NAME-best and copied to ``out``.
    Returns the stage's report entry."""
    import shutil

    best_dir = run.work / f"{name}-best"

    def save_best() -> None:
        if is_main():
            save_compressed(student, spec, best_dir)
        barrier()

    def measure() -> dict:
        return {"dev_ce": run.dev_ce(student), "dev_wer": run.dev_wer(student)}

    history = run.report.get(f"{name}_history")
    if not history:  # the start is a check too: a stage that only makes it worse hands the start on
        history = [{"step": 0, **measure()}]
        save_best()
    best = train_checked(train_to, measure, save_best, steps, history,
                         lambda h: run.save_report(**{f"{name}_history": h}), STUDENT_CHECKS,
                         lambda m: _log(f"{name}: {m}"))
    if is_main():
        shutil.copytree(best_dir, out, dirs_exist_ok=True)
    barrier()
    return {"dev_wer": best["dev_wer"], "dev_ce": best["dev_ce"], "steps": best["step"],
            "steps_run": history[-1]["step"], "requested_steps": steps}


# dev checks over each end-to-end student stage, ranked by dev WER as users decode (the fallback):
# measured, dev CE on the references kept a started student that looped on a test prompt, and
# the end-to-end stage first raises dev CE before it lowers it (patience 3, not 2)
STUDENT_CHECKS = DevChecks(evals=6, patience=3, key="dev_wer")


def _must_train(folder: Path, ckpt_dir: Path, steps: int, flag: str, can_continue: bool = True,
                requested: int | None = None) -> bool:
    """Whether a stage (re)enters training: its model is not saved yet, or a rerun asks for
    more steps than its checkpoint holds (training then continues from it, when nothing built
    on the stage's result would go stale). Fewer steps than done is refused, not ignored.
    ``requested``: the steps the saved stage was asked for (it may have stopped early on dev)."""
    if not (folder / "model.safetensors").exists():
        return True
    if requested == steps:
        return False
    ckpt = ckpt_dir / "distill_checkpoint.pt"
    done = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["step"] if ckpt.is_file() else steps
    if done == steps:
        return False
    if done < steps and can_continue:
        return True
    raise MlxBaldError(f"{folder} was trained for {done} steps; {flag} {steps} "
                       + ("is fewer" if done > steps else "would leave the later stages built on it stale")
                       + ": rerun with the same value, or use a new --out")
