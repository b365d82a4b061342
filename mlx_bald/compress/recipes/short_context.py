"""The short-context recipe: tune a model (stock or compressed) so that clips up to ``limit_s``
seconds can be encoded on their own frames instead of a padded 30 s window.

1. Data: clips of at most ``limit_s`` seconds from English and multilingual sets the project has
   (real and synthetic English, Czech, Dutch), their full-window encoder states cached once.
2. Registers (compress/ops/short_context.py) start as the encoder's padding states.
3. Only the registers train (train/short_context.py): every decoder layer's output and the
   output distribution on the short context learn to match the full window's, teacher-forced
   on the references. Every weight of the model stays as it was: long audio is unchanged.
4. Scores, before and after: teacher-forced agreement of the short run with the full window on
   held-out dev clips (plain short context, started registers, trained registers) and the test
   WER of both paths decoded as users decode (temperature fallback).
5. The model is saved with ``short_context_s`` and ``short_context_registers`` in its spec; the
   MLX runtime then encodes clips up to ``limit_s`` on a short context.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch

from mlx_bald.compress.ops.model import SPEC_KEY, count_parameters, record_spec, save_compressed
from mlx_bald.buckets import bucket_frames
from mlx_bald.compress.ops.short_context import encode_short, install_registers, padding_registers
from mlx_bald.compress.recipes.skeleton import RecipeRun
from mlx_bald.compress.train.data import ensure_encoder_cache, features, subset
from mlx_bald.compress.train.hardware import check_precision, resolve_device
from mlx_bald.compress.train.short_context import ShortContextConfig, short_agreement, short_batches, train_registers
from mlx_bald.short_context_options import ShortContextOptions
from mlx_bald.spec import CompressionSpec

_FIXED = ("model", "limit_s", "registers", "batch_size", "lr", "audio", "clips_per_set", "bucket_s", "seed")


def _log(msg: str) -> None:
    print(f"[short-context] {msg}", file=sys.stderr, flush=True)


def _clips(name: str, limit_s: float, n: int | None, seed: int) -> list:
    from mlx_bald.data import load_set

    return subset([c for c in load_set(name) if len(c.audio) <= limit_s * 16_000], n, seed)


def run_short_context(o: ShortContextOptions) -> Path:
    """Run the recipe; returns the tuned checkpoint folder (``out/student``)."""
    from mlx_bald.torch_ref import load_torch_model

    CompressionSpec(short_context_s=o.limit_s, short_context_registers=o.registers).validate()  # the bounds, once
    check_precision(o.precision)
    run = RecipeRun(o.out, o, _FIXED)
    device = resolve_device(o.device)
    model = copy.deepcopy(load_torch_model(o.model)).to(device).eval()
    spec = CompressionSpec.from_dict(getattr(model.config, SPEC_KEY, None))
    if spec.short_context_s is not None:
        raise ValueError(f"{o.model} is already tuned for a short context ({spec.short_context_s:g} s)")

    def cached(sets: tuple[str, ...], n: int | None) -> tuple[list, dict]:
        clips, where = [], {}
        for name in sets:
            part = _clips(name, o.limit_s, n, o.seed)
            folder = ensure_encoder_cache(model, o.model, name, part)
            clips += part
            where |= {c.id: folder for c in part}
        return clips, where

    from mlx_bald.compress.train.clip_store import load_cached_encoder_output

    train, train_at = cached(o.audio, o.clips_per_set)
    dev, dev_at = cached(o.dev, o.dev_clips)
    vocab, n_mels = model.config.vocab_size, model.config.num_mel_bins
    full = lambda where: (lambda c: load_cached_encoder_output(where[c.id], c.id).float())  # noqa: E731
    batches = short_batches(train, full(train_at), o.batch_size, o.bucket_s, vocab, n_mels, o.seed)
    dev_batches = short_batches(dev, full(dev_at), o.batch_size, o.bucket_s, vocab, n_mels, o.seed)
    run.save_report(data={"train_clips": len(train), "dev_clips": len(dev), "batches": len(batches),
                          "limit_s": o.limit_s})

    silence = torch.full((n_mels, 2 * model.config.max_source_positions), _padding_value(train, n_mels))
    start = padding_registers(model.model.encoder, o.registers, silence.to(device))
    install_registers(model.model.encoder, start)
    scores = run.report.get("agreement", {})
    if "plain" not in scores:
        _log("agreement of the plain short context and the started registers with the full window (dev)")
        scores = {"plain": short_agreement(model, dev_batches, registers=False),
                  "started": short_agreement(model, dev_batches)}
        run.save_report(agreement=scores)
    cfg = ShortContextConfig(lr=o.lr, steps=o.steps, seed=o.seed, precision=o.precision, bucket_s=o.bucket_s)
    _log(f"training {o.registers} registers x {len(model.model.encoder.layers)} layers on {len(train)} clips, "
         f"{o.steps} steps")
    losses = train_registers(model, batches, cfg, run.work / "registers.pt")
    if "trained" not in scores or scores.get("steps") != o.steps:
        scores = scores | {"trained": short_agreement(model, dev_batches), "steps": o.steps}
        run.save_report(agreement=scores, train_losses={k: round(v, 4) for k, v in losses.items()})
    _log(f"dev agreement with the full window: plain {scores['plain']['agreement']}%, started "
         f"{scores['started']['agreement']}%, trained {scores['trained']['agreement']}%")
    if o.scores:
        done = run.report.get("test", {}) if run.report.get("test_steps") == o.steps else {}
        run.save_report(test=_test_scores(model, o, done), test_steps=o.steps)

    tuned = replace(spec, short_context_s=o.limit_s, short_context_registers=o.registers,
                    recipe=[*spec.recipe, "short-context"],
                    notes={**spec.notes, "short_context": {"audio": list(o.audio), "steps": o.steps}})
    record_spec(model, tuned)
    out = save_compressed(model, tuned, Path(o.out) / "student")
    run.save_report(params={"model": count_parameters(model)}, spec=tuned.to_dict())
    return out


def _padding_value(clips: list, n_mels: int) -> float:
    """The log-mel value of Whisper's padding in a real window: it depends on the clip's loudest
    frame (the log-mel is clamped 8 below its maximum), so take the median over a few clips."""
    return float(torch.tensor([features(c, n_mels).min() for c in clips[:16]]).median())


def _test_scores(model, o: ShortContextOptions, done: dict) -> dict:
    """Per test set: WER (%) of the full window and of the short context, temperature fallback."""
    from mlx_bald.compress.train.greedy import fallback_transcribe
    from mlx_bald.evaluate import corpus_wer
    from mlx_bald.compress.train.clip_store import load_cached_encoder_output

    out = dict(done)
    for name in o.test:
        if name in out:
            continue
        clips = _clips(name, o.limit_s, None, o.seed)
        folder = ensure_encoder_cache(model, o.model, name, clips)
        hyps = {"full": [], "short": []}
        for c in clips:
            frames = bucket_frames(len(c.audio), bucket_s=o.bucket_s)
            mel = features(c, model.config.num_mel_bins)[None, :, :frames]
            with torch.no_grad():
                short = encode_short(model.model.encoder, mel.to(next(model.parameters()).device))
            full = load_cached_encoder_output(folder, c.id)[None].float()
            for key, states in (("full", full), ("short", short)):
                hyps[key] += fallback_transcribe(model, states, c.language, seed=0)
        refs = [c.text for c in clips]
        wer = {f"wer_{k}": round(corpus_wer(refs, [h.text for h in v], clips[0].language)[0], 2) for k, v in hyps.items()}
        out[name] = {"clips": len(clips), **wer}
        _log(f"{name}: WER full window {out[name]['wer_full']}, short context {out[name]['wer_short']}")
    return out
