"""Start-stage ablation: how close each way of starting a depth-reduced decoder gets to its teacher
before any end-to-end step, and after a short end-to-end distillation.

For each variant (layer choice x least-squares patch x local distillation, recipes/start.py) it
builds a 3-layer student of whisper-base from states teacher-forced on base's own greedy
transcripts of ``--fit-set`` clips, then scores it teacher-forced on base's greedy tokens of
asterisk-en:test + LibriVox: agreement (% of base's tokens its argmax reproduces) and
cross-entropy (nats/token on them). ``--global-steps N`` adds the same scores after N steps of
the recipes' end-to-end distillation (CE + KL on the same fit clips).

    python -m benchmarks.recovery                     # every variant, table on stdout
    python -m benchmarks.recovery --variants "spaced + local (student inputs)" --json
    python -m benchmarks.recovery --global-steps 100 --out benchmarks/results/recovery

With ``--json`` it prints one JSON object: ``default_start_agreement`` (the recipes' default start,
StartConfig()), ``base`` (base's own scores) and ``variants`` (every row).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from mlx_bald.cli.arg_types import nonneg_int, positive_int

VARIANTS = {  # name -> StartConfig fields over the defaults' (mlx_bald/start_config.py)
    "pairs averaged (alpha 0.5)": dict(layers="pairs", alpha=0.5, patch="none", local_steps=0),
    "pairs averaged (alpha 0.2)": dict(layers="pairs", alpha=0.2, patch="none", local_steps=0),
    "upper layer of each pair": dict(layers="upper", patch="none", local_steps=0),
    "lower layer of each pair": dict(layers="lower", patch="none", local_steps=0),
    "spaced (last kept)": dict(patch="none", local_steps=0),
    "pairs alpha 0.2 + patch (refit)": dict(layers="pairs", alpha=0.2, patch="refit", local_steps=0),
    "spaced + patch (map)": dict(patch="map", ridge=0.03, local_steps=0),
    "spaced + patch (refit)": dict(patch="refit", local_steps=0),
    "spaced + local (teacher inputs)": dict(local_inputs="teacher"),
    "spaced + local (student inputs)": {},  # the recipes' default
    "spaced + patch (refit) then local": dict(patch="refit", order="patch-then-local"),
    "spaced + local then patch (refit)": dict(patch="refit"),
}
EVAL_SETS = ("asterisk-en:test", "librivox")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--keep", type=positive_int, default=3, help="decoder layers the student keeps (default 3)")
    p.add_argument("--fit-set", default="asterisk-en:train", help="clips the start is fitted on")
    p.add_argument("--fit-clips", type=positive_int, default=444, help="how many of them (a fixed seeded subset; "
                   "asterisk-en:train has 444)")
    p.add_argument("--variants", default="all", help="comma-separated names (see VARIANTS), or all")
    p.add_argument("--local-steps", type=nonneg_int, default=None, help="override every variant's local steps")
    p.add_argument("--global-steps", type=nonneg_int, default=0, help="end-to-end steps after the start (0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=None, help="write recovery.json and recovery.md here")
    return p.parse_args(argv)


def _labelled(base, model: str, spec: str, n: int | None):
    """(clips, encoder cache, base's greedy labels) of a set (caches shared with the recipes)."""
    import torch

    from mlx_bald.compress.recipes.bald import PSEUDO_LABEL_TOKENS
    from mlx_bald.compress.train.data import ensure_encoder_cache, subset
    from mlx_bald.compress.train.distill import load_cached_encoder_output
    from mlx_bald.compress.train.greedy import greedy_pseudo_labels
    from mlx_bald.data import load_set

    clips = subset(load_set(spec), n, 0)
    cache = ensure_encoder_cache(base, model, spec, clips)
    labels = greedy_pseudo_labels(base, [c.id for c in clips], {c.id: c.language for c in clips},
                                  lambda ids: torch.stack([load_cached_encoder_output(cache, i) for i in ids]),
                                  cache / f"greedy_labels-{PSEUDO_LABEL_TOKENS}.json", f"base labels ({spec})",
                                  max_new_tokens=PSEUDO_LABEL_TOKENS)
    return clips, cache, labels


def _global(student, teacher, spec, fit, steps: int, vocab: int) -> None:
    """The recipes' end-to-end stage (CE on base's tokens + KL), ``steps`` steps."""
    from mlx_bald.compress.recipes.bald import PSEUDO_LABEL_TOKENS
    from mlx_bald.compress.train.data import batches_from_cache
    from mlx_bald.compress.train.distill import DistillConfig, train_decoder

    clips, cache, labels = fit
    cfg = DistillConfig(lr=1.5e-4, steps=steps, seed=0)
    train_decoder(student, teacher, batches_from_cache(clips, cache, 8, 2, texts=labels, vocab=vocab,
                                                       max_tokens=PSEUDO_LABEL_TOKENS), cfg, None)


def run(a: argparse.Namespace) -> dict:
    import torch

    from mlx_bald.compress.recipes.bald import PSEUDO_LABEL_TOKENS
    from mlx_bald.compress.recipes.start import StartConfig, build_start
    from mlx_bald.compress.train.data import tokenizer
    from mlx_bald.compress.train.decoder_states import teacher_forced_scores, token_batches
    from mlx_bald.torch_ref import load_torch_model

    torch.manual_seed(0)
    base = copy.deepcopy(load_torch_model(a.model)).eval()
    vocab = base.config.vocab_size
    eot = tokenizer(vocab).eot
    fit = _labelled(base, a.model, a.fit_set, a.fit_clips)
    fit_batches = token_batches(*fit, vocab, PSEUDO_LABEL_TOKENS)
    eval_batches = [b for s in EVAL_SETS for b in token_batches(*_labelled(base, a.model, s, None), vocab,
                                                             PSEUDO_LABEL_TOKENS)]
    out = {"model": a.model, "keep": a.keep, "fit_set": f"{a.fit_set} ({len(fit[0])} clips)",
           "eval_sets": list(EVAL_SETS), "global_steps": a.global_steps, "base": teacher_forced_scores(base, eval_batches, eot), "variants": []}
    names = list(VARIANTS) if a.variants == "all" else [v.strip() for v in a.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    done = _earlier_rows(a, out)
    for name in names:
        if name in done:  # measured by an earlier run into the same --out with the same setting
            out["variants"].append(done[name])
            continue
        cfg = replace(StartConfig(), **VARIANTS[name])
        if a.local_steps is not None and cfg.local_steps:
            cfg = replace(cfg, local_steps=a.local_steps)
        t0 = time.time()
        student, spec, report = build_start(base, a.keep, fit_batches, cfg, progress=not a.json)
        row = {"variant": name, "default": cfg == StartConfig(), "config": vars(cfg).copy(),
               "start_seconds": round(time.time() - t0, 1),
               "start": teacher_forced_scores(student, eval_batches, eot)}
        if a.global_steps:
            _global(student, base, spec, fit, a.global_steps, vocab)
            row[f"after_{a.global_steps}_steps"] = teacher_forced_scores(student, eval_batches, eot)
        out["variants"].append(row)
        print(f"[recovery] {name}: {row['start']} ({row['start_seconds']} s)", file=sys.stderr, flush=True)
        if a.out:  # every finished row is kept, so a long run can be read (and resumed by hand) midway
            _write(a.out, out)
    default = next((r for r in out["variants"] if r["default"]), None)
    out["default_start_agreement"] = default["start"]["agreement"] if default else None
    return out


def _earlier_rows(a: argparse.Namespace, out: dict) -> dict[str, dict]:
    """Rows of an interrupted run into the same ``--out`` with the same model, set and steps."""
    from mlx_bald.start_config import StartConfig

    path = a.out / "recovery.json" if a.out else None
    if path is None or not path.is_file():
        return {}
    before = json.loads(path.read_text())
    if any(before.get(k) != out[k] for k in ("model", "keep", "fit_set")) or before.get("global_steps", 0) != a.global_steps:
        return {}
    # which row is the default is today's StartConfig's say, not the earlier run's
    return {r["variant"]: r | {"default": StartConfig(**r["config"]) == StartConfig()} for r in before.get("variants", [])}


def markdown(res: dict) -> str:
    after = [k for k in (res["variants"][0] if res["variants"] else {}) if k.startswith("after_")]
    head = "| start | agreement % | CE | seconds |" + "".join(f" {k.replace('_', ' ')}: agreement % / CE |" for k in after)
    lines = [head, "|---" * (4 + len(after)) + "|",
             f"| {res['model']} itself | {res['base']['agreement']} | {res['base']['ce']} | |" + " |" * len(after)]
    for r in res["variants"]:
        lines.append(f"| {r['variant']}{' (default)' if r['default'] else ''} | {r['start']['agreement']} | {r['start']['ce']} | {r['start_seconds']} |"
                     + "".join(f" {r[k]['agreement']} / {r[k]['ce']} |" for k in after))
    return "\n".join(lines) + "\n"


def _write(folder: Path, res: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recovery.json").write_text(json.dumps(res, indent=2))
    (folder / "recovery.md").write_text(markdown(res))


def main(argv=None) -> None:
    a = _parse(argv)
    res = run(a)
    if a.out:
        _write(a.out, res)
    print(json.dumps(res) if a.json else markdown(res))


if __name__ == "__main__":
    main()
