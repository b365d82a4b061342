"""Training throughput of the compression stages: today's code against the new code, side by
side in one run, on a fixed slice of real speech (fillets-cs train clips, Czech labels).

Each cell runs in its own process (peak RSS is per cell); "today" runs the code of a git ref
(default: the commit before the throughput work), extracted with `git archive`, on the same
data, model and settings. Cells: the encoder-output cache (clips/s) and the BaldWhisper
decoder stages (steps/s at batch 8, 64-token cap): teacher fine-tune, merge (specialised: CE +
KL; general: + hidden-state matching), low-rank embedding. After the same steps from the same
start, each cell also reports the dev cross-entropy, so a speed-up that changes what is
learnt shows. The AdaPTwin cells (one product-twin layer trained layer-wise; the encoder
recovered end to end) train on cached base hidden states and report their last-epoch loss.
Levers are variants of the new code (on --lever-stages): 1 thread, bf16
autocast, and 2 data-parallel processes of 1 thread each (torchrun, gloo) on the same global
batch. The cross-attention K/V cache sits beside the encoder cache and serves every stage, so
the first new cell of a run pays for it (its "one-time precompute" column).

    .venv/bin/python -m benchmarks.studies.train_throughput            # writes benchmarks/studies/results/train_throughput.{md,json}
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE_REF = "39ecf58"
STAGES = ("encoder-cache", "teacher", "merge", "merge-general", "embedding", "twin-layer", "recovery")
VARIANTS = ("today", "new", "new-1thread", "new-bf16", "new-2proc")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--variants", default="today,new,new-1thread,new-bf16,new-2proc",
                   help=f"comma-separated, of {', '.join(VARIANTS)}; new-2proc: 2 data-parallel processes "
                        "(torchrun, gloo) of 1 thread each on the same global batch")
    p.add_argument("--lever-stages", default="merge",
                   help="stages that also run the lever variants (all but today and new)")
    p.add_argument("--clips", type=int, default=48, help="fillets-cs train clips (a fixed random subset)")
    p.add_argument("--cache-clips", type=int, default=36, help="clips encoded by the encoder-cache cell (12 was too few: ±10%% noise)")
    p.add_argument("--dev-clips", type=int, default=24, help="fillets-cs dev clips for the dev cross-entropy")
    p.add_argument("--steps", type=int, default=30, help="training steps per cell (decoder stages)")
    p.add_argument("--layer-clips", type=int, default=16,
                   help="AdaPTwin cells: clips whose cached base hidden states train one twin layer (batch 4, "
                        "--steps steps) and the end-to-end recovery (batch 2, one epoch)")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of 'today'")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="train_throughput")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # STAGE:VARIANT, run in a child process
    return p.parse_args(argv)


def _compress(module: str):
    """``mlx_bald.compress.<module>`` (ops/, train/), or its flat name in trees older than that
    layout (today's code: train.data was compress/data.py)."""
    import importlib

    try:
        return importlib.import_module(f"mlx_bald.compress.{module}")
    except ModuleNotFoundError:
        return importlib.import_module(f"mlx_bald.compress.{module.split('.')[-1]}")


# ---- one cell (child process) ---------------------------------------------------------------
def _cell(stage: str, variant: str, a: argparse.Namespace) -> dict:
    import torch

    if variant.endswith(("1thread", "2proc")):
        torch.set_num_threads(1)
    if variant == "new-2proc":
        from mlx_bald.compress.train.hardware import init_from_env
        init_from_env()
    data = _compress("train.data")
    batches_from_cache, ensure_encoder_cache, subset = data.batches_from_cache, data.ensure_encoder_cache, data.subset
    from mlx_bald.data import load_set
    from mlx_bald.torch_ref import load_torch_model

    base = copy.deepcopy(load_torch_model("whisper-base")).eval()
    train = subset(load_set("fillets-cs:train"), a.clips, 0)
    if stage == "encoder-cache":
        clips = train[: a.cache_clips]
        for c in clips:
            c._audio = None  # decode inside the timed region, as a fresh run does
        name = f"bench-{variant}-{os.getpid()}"
        t0 = time.perf_counter()
        folder = ensure_encoder_cache(base, "bench", name, clips, progress=False)
        seconds = time.perf_counter() - t0
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        return {"rate": len(clips) / seconds, "unit": "clips/s", "seconds": seconds, "items": len(clips)}

    if stage in ("twin-layer", "recovery"):
        return _encoder_cell(stage, base, train[: a.layer_clips], a)

    from mlx_bald.compress import apply_spec
    DistillConfig, train_decoder = _compress("train.distill").DistillConfig, _compress("train.distill").train_decoder
    factorize_embedding = _compress("ops.embedding").factorize_embedding
    dev_cross_entropy = _compress("train.greedy").dev_cross_entropy
    from mlx_bald.spec import CompressionSpec, MergeGroup

    dev = load_set("fillets-cs:dev")[: a.dev_clips]
    cache = ensure_encoder_cache(base, "whisper-base", "fillets-cs:train", train, progress=False)
    dev_cache = ensure_encoder_cache(base, "whisper-base", "fillets-cs:dev", dev, progress=False)
    merge = CompressionSpec(decoder_merge=[MergeGroup([i, i + 1], [0.2, 0.8]) for i in (0, 2, 4)], recipe=["bald"])
    common = dict(steps=a.steps, seed=0, checkpoint_every=10**9)
    if stage == "teacher":
        student = copy.deepcopy(base)
        cfg = DistillConfig(lr=1e-5, kd_weight=0.0, feature_weight=0.0, learn_temperature=False, **common)
    else:
        student = apply_spec(copy.deepcopy(base), merge)
        hidden = ((0, 1), (1, 3), (2, 5)) if stage == "merge-general" else ()
        cfg = DistillConfig(lr=1.5e-4, hidden_weight=1.0 if hidden else 0.0, hidden_map=hidden, **common)
        if stage == "embedding":
            factorize_embedding(student, 96)
            cfg = DistillConfig(lr=1.5e-4, feature_weight=0.1, **common)
    kw: dict = {}
    pre_seconds = 0.0
    if variant != "today":
        import dataclasses

        from mlx_bald.compress.train.data import token_rows
        from mlx_bald.compress.train.hardware import main_first
        from mlx_bald.compress.train.targets import Precomputed

        if variant.endswith("bf16"):
            cfg = dataclasses.replace(cfg, precision="bf16")
        t0 = time.perf_counter()
        work = Path(tempfile.gettempdir()) / f"mlx-bald-bench-{stage}-{variant}-{os.getppid()}"
        pre = Precomputed(base, {c.id: cache for c in train}, work, progress=False)
        layers = sorted({t for _, t in cfg.hidden_map}) if cfg.hidden_weight > 0 else []
        teacher = base if (cfg.kd_weight > 0 or layers) else None
        with main_first():
            extras, states = pre.extras(student, teacher, token_rows(train, max_tokens=64), "labels", layers)
        kw = {"extras": extras, "encoder_states": states}
        pre_seconds = time.perf_counter() - t0
    batches = batches_from_cache(train, cache, 8, 2, max_tokens=64, **kw)
    t0 = time.perf_counter()
    losses = train_decoder(student, base, batches, cfg, progress=False)
    seconds = time.perf_counter() - t0
    return {"rate": a.steps / seconds, "unit": "steps/s", "seconds": seconds, "items": a.steps,
            "precompute_seconds": round(pre_seconds, 1), "train_loss": round(losses.get("loss", float("nan")), 4),
            "dev_ce": round(dev_cross_entropy(student, dev, dev_cache, max_tokens=64), 4)}


def _encoder_cell(stage: str, base, clips: list, a: argparse.Namespace) -> dict:
    """AdaPTwin's training stages on cached base hidden states (built here, not timed): one
    product-twin encoder layer (rank 40 attention, rank 180 FFN, LoRA included) trained
    layer-wise, or the whole encoder recovered end to end (h0 -> output after the final norm)."""
    from mlx_bald.compress import apply_spec
    features = _compress("train.data").features
    lc = _compress("train.layer_cache")
    HiddenStates, LayerStack, LayerTrainConfig, train_layer = lc.HiddenStates, lc.LayerStack, lc.LayerTrainConfig, lc.train_layer
    from mlx_bald.paths import cache_dir
    from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank

    states = HiddenStates(cache_dir() / "bench-hidden" / "whisper-base-fillets-cs-train")
    states.build(base, ((c.id, features(c)) for c in clips), progress=False)
    ids = [c.id for c in clips]
    if stage == "twin-layer":
        spec = CompressionSpec(attention={"encoder.blocks.2.attn": AttentionRank(40, 40, 8, 8)},
                               ffn={"encoder.blocks.2.mlp": FFNRank(180, 180, 18)}, recipe=["adaptwin"])
        layer = apply_spec(copy.deepcopy(base), spec).model.encoder.layers[2]
        cfg = LayerTrainConfig(lr=3e-4, epochs=max(1, a.steps * 4 // len(ids)), batch_size=4)
        kw, src, dst = {}, 2, 3
    else:
        layer = LayerStack(list(copy.deepcopy(base).model.encoder.layers), base.model.encoder.layer_norm)
        cfg = LayerTrainConfig(lr=1e-4, epochs=1, batch_size=2)
        kw, src, dst = {"params": layer.trainable_parameters(), "target": layer.target}, 0, len(base.model.encoder.layers)
    t0 = time.perf_counter()
    stats = train_layer(layer, states, ids, src, dst, cfg, progress=False, **kw)
    seconds = time.perf_counter() - t0
    return {"rate": stats["steps"] / seconds, "unit": "steps/s", "seconds": seconds, "items": stats["steps"],
            "train_loss": round(stats["loss_last_epoch"], 6)}


# ---- the driver -----------------------------------------------------------------------------
def _baseline_tree(ref: str) -> Path:
    """The code of ``ref``, extracted once into the cache (no work tree, no checkout)."""
    from mlx_bald.paths import cache_dir

    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    out = cache_dir() / "bench-baselines" / sha
    if not (out / "mlx_bald").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _run_cell(stage: str, variant: str, a: argparse.Namespace, tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    launcher = [sys.executable]
    if variant == "new-2proc":
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        env["OMP_NUM_THREADS"] = "1"
    cmd = [*launcher, str(Path(__file__).resolve()), "--cell", f"{stage}:{variant}",
           "--clips", str(a.clips), "--cache-clips", str(a.cache_clips), "--dev-clips", str(a.dev_clips),
           "--steps", str(a.steps), "--layer-clips", str(a.layer_clips)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    out = ["| stage | variant | rate | vs today | peak RSS GiB | one-time precompute s | dev CE (encoder cells: train MSE) after the steps |",
           "|---|---|---:|---:|---:|---:|---:|"]
    today = {r["stage"]: r for r in rows if r["variant"] == "today" and "rate" in r}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['stage']} | {r['variant']} | error: {r['error']} | | | | |")
            continue
        ref = today.get(r["stage"])
        ratio = f"{r['rate'] / ref['rate']:.2f}x" if ref else "–"
        ce = r.get("dev_ce", f"train MSE {r['train_loss']}" if "train_loss" in r else "–")
        if ref and "dev_ce" in r and r["variant"] != "today":
            ce = f"{r['dev_ce']} ({100 * (r['dev_ce'] / ref['dev_ce'] - 1):+.1f}%)"
        out.append(f"| {r['stage']} | {r['variant']} | {r['rate']:.3f} {r['unit']} | {ratio} | {r['peak_rss_gib']:.2f} "
                   f"| {r.get('precompute_seconds', '–')} | {ce} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.cell:
        stage, variant = a.cell.split(":")
        result = _cell(stage, variant, a)
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if int(os.environ.get("RANK", "0")) == 0:  # one line per cell (rank 0's, under torchrun)
            print(json.dumps(result))
        return 0
    from tqdm import tqdm

    stages, variants = a.stages.split(","), a.variants.split(",")
    trees = {v: (_baseline_tree(a.baseline_ref) if v == "today" else ROOT) for v in variants}
    rows = []
    t0 = time.time()
    load0 = os.getloadavg()
    levers = set(a.lever_stages.split(","))
    cells = [(s, v) for s in stages for v in variants
             if v in ("today", "new") or (s in levers and not (v == "new-2proc" and s == "encoder-cache"))]
    for stage in tqdm(cells, desc="cells"):
        rows.append({"stage": stage[0], "variant": stage[1]} | _run_cell(*stage, a, trees[stage[1]]))
        tqdm.write(json.dumps(rows[-1]))
    import platform
    meta = {"command": "python -m benchmarks.studies.train_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
            "baseline_ref": a.baseline_ref, "clips": a.clips, "steps": a.steps, "dev_clips": a.dev_clips,
            "cache_clips": a.cache_clips, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "loadavg_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)], "wall_s": round(time.time() - t0)}
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"{a.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = (f"# Training throughput (`{meta['command']}`)\n\n{meta['clips']} fillets-cs train clips, batch 8, 64-token cap, "
          f"{meta['steps']} steps per cell; dev CE on {meta['dev_clips']} fillets-cs dev clips; today = `{a.baseline_ref}`. "
          f"Machine: {meta['machine']}; load average start/end {meta['loadavg_start_end']}; {meta['wall_s']} s.\n\n"
          + _table(rows) + "\n")
    (a.results / f"{a.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
