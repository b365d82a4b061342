"""Encoder compression table (issue 4): AdaPTwin level x encoder layers pruned -> WER and size.

Rows: encoder layers pruned (0, 1, 2); columns: AdaPTwin compression of the kept encoder
layers (0, 25, 50% of their parameters). One run of layer-wise fine-tuning serves every cell:
the 50% cells use every kept layer's twin, the 25% cells keep the twins with the lowest
measured error (variable compression, no retraining); pruned cells add bridge layers.
WER with the PyTorch engine (greedy) on the LibriVox English clips and on the first N clips
of the Czech test split; parameter counts from the saved checkpoints.

Reproduce (resumable; checkpoints under the work folder, results in benchmarks/studies/results):
    .venv/bin/python -m benchmarks.studies.encoder_table
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _args(argv: list[str] | None) -> argparse.Namespace:
    from mlx_bald.paths import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=cache_dir() / "runs" / "encoder-table-v2", help="work folder")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--name", default="encoder_table", help="results file stem (.md and .json)")
    p.add_argument("--levels", default="0,0.25,0.5", help="AdaPTwin targets (fraction of kept layer params)")
    p.add_argument("--prune", default="0,1,2", help="encoder layers pruned")
    p.add_argument("--cs-clips", type=int, default=60, help="first N clips of fillets-cs:test")
    p.add_argument("--train-clips", type=int, default=960, help="unlabelled Czech train clips, packed into windows")
    p.add_argument("--heldout-clips", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3, help="layer-wise epochs per twin")
    p.add_argument("--init", choices=("whiten", "asvd"), default="whiten", help="twin SVD initialisation")
    p.add_argument("--train-audio", default="fillets-nl:train,tts-en:train",
                   help="unlabelled sets added to the Czech windows for every stage, e.g. fillets-nl:train,tts-en:train")
    p.add_argument("--audio-clips", type=int, default=400, help="clips per --train-audio/--recover-audio set")
    p.add_argument("--bridge-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--recover", default="c50-p0,c0-p2",
                   help="cells that also get end-to-end recovery (extra rows; '' for none)")
    p.add_argument("--mix-recover", default="c50-p0",
                   help="cells that also get a recovery on Czech + --recover-audio windows (extra rows)")
    p.add_argument("--recover-audio", default="fillets-nl:train,tts-en:train",
                   help="unlabelled sets added to the mixed recovery (tts-en: synthetic English)")
    p.add_argument("--recover-epochs", type=int, default=2)
    p.add_argument("--recover-lr", type=float, default=1e-4)
    p.add_argument("--recover-kl", type=float, default=0.0,
                   help="weight of the KL through base's frozen decoder in recovery (rows named -kl<w>)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p.parse_args(argv)


def _evaluate(cell: str, model: str, set_spec: str, limit: int | None, out: Path) -> dict:
    """One (cell, set) evaluation, cached as JSON (hypotheses included)."""
    from mlx_bald.evaluate import evaluate

    path = out / "eval" / f"{cell}--{set_spec.replace(':', '-')}.json"
    if path.is_file():
        return json.loads(path.read_text())
    res = evaluate(model, set_spec, engine="torch", limit=limit).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, ensure_ascii=False))
    return res


def main(argv: list[str] | None = None) -> int:
    import torch

    import mlx_bald  # noqa: F401
    from mlx_bald.compress import count_parameters
    from mlx_bald.compress.recipes.encoder import EncoderOptions, EncoderRun
    from mlx_bald.torch_ref import load_torch_model

    a = _args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    levels = [float(x) for x in a.levels.split(",")]
    prunes = [int(x) for x in a.prune.split(",")]
    recover = {c for c in a.recover.split(",") if c}
    run = EncoderRun(EncoderOptions(out=a.out, train_clips=a.train_clips, heldout_clips=a.heldout_clips,
                                    epochs=a.epochs, bridge_epochs=a.bridge_epochs, lr=a.lr,
                                    recover_lr=a.recover_lr, recover_kl=a.recover_kl, init=a.init, audio_clips=a.audio_clips,
                                    train_audio=tuple(x for x in a.train_audio.split(",") if x),
                                    recover_audio=tuple(x for x in a.recover_audio.split(",") if x)))
    # cells with a mixed recovery row: only when --recover-audio adds windows the layers did not see
    mixed = {c for c in a.mix_recover.split(",") if c} if run.extra_ids else set()
    t_states = time.time()
    run.train_twins()
    t_twins = time.time()
    base = load_torch_model("whisper-base")
    base_enc_layers = sum(count_parameters(l) for l in base.model.encoder.layers)
    cells = []
    for p in prunes:
        for level in levels:
            name = f"c{round(level * 100)}-p{p}"
            if p == 0 and level == 0:
                cells.append({"cell": name, "model": "whisper-base", "level": 0.0, "prune": 0, "twins": [],
                              "pruned": [], "params": count_parameters(base),
                              "encoder_params": count_parameters(base.model.encoder),
                              "encoder_layer_params": base_enc_layers, "compression_of_kept_layers": 0.0,
                              "encoder_layer_reduction": 0.0})
                continue
            r, kl = a.recover_epochs, f"-kl{a.recover_kl:g}" if a.recover_kl > 0 else ""
            variants = [(name, 0, False)] + ([(f"{name}-r{r}{kl}", r, False)] if name in recover and r > 0 else []) \
                + ([(f"{name}-r{r}{kl}-mix", r, True)] if name in mixed and r > 0 else [])
            for cell, epochs, mix in variants:
                folder = run.build(p, level, a.out / "cells" / cell, recover_epochs=epochs, mixed=mix)
                s = run.report["results"][cell]
                cells.append({"cell": cell, "model": str(folder), "level": level, "prune": p,
                              "recovery": s.get("recovery"),
                              **{k: s[k] for k in ("twins", "pruned", "params", "encoder_params",
                                                   "encoder_layer_params", "compression_of_kept_layers",
                                                   "encoder_layer_reduction")}})
    t_build = time.time()
    sets = [("librivox", None), ("fillets-cs:test", a.cs_clips)]
    for c in cells:
        for set_spec, limit in sets:
            res = _evaluate(c["cell"], c["model"], set_spec, limit, a.out)
            c[set_spec] = {"wer": res["wer"], "n_clips": res["n_clips"], "normalizer": res["normalizer"]}
            print(f"{c['cell']} {set_spec}: WER {res['wer']}", file=sys.stderr, flush=True)
    t_eval = time.time()
    run.save_report()  # keeps this session's peak memory in the report
    timing = {"hidden_states_and_setup_s": round(t_states - t0, 1), "twins_s": round(t_twins - t_states, 1),
              "bridges_errors_build_s": round(t_build - t_twins, 1), "evaluation_s": round(t_eval - t_build, 1)}
    _write(a, run, cells, timing)
    return 0


def _flags(a: argparse.Namespace) -> list[str]:
    """The command-line flags that differ from the defaults (for the reproduce line)."""
    default = vars(_args([]))
    skip = {"out", "results", "threads"}
    return [f"--{k.replace('_', '-')} {v if str(v) else repr('')}" for k, v in vars(a).items()
            if k not in skip and v != default[k]]


def _write(a: argparse.Namespace, run, cells: list[dict], timing: dict) -> None:
    base = next(c for c in cells if c["cell"] == "c0-p0")
    twins_s = sum(s.get("seconds", 0) for s in run.report.get("twins", {}).values())
    peak = max(run.report.get("peak_rss_gib", 0), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    ranks = run.report["ranks"]
    lines = [
        "# Encoder compression: AdaPTwin x layer pruning (whisper-base)", "",
        f"Reproduce: `.venv/bin/python -m benchmarks.studies.encoder_table {' '.join(_flags(a))}` (work folder `{a.out}`).", "",
        f"- AdaPTwin twins: attention head rank r_a + l_a = {ranks['attention']['qk_rank']} "
        f"(LoRA {ranks['attention']['lora_qk']}), FFN rank r_f + l_f = {ranks['ffn']['fc1_rank']} "
        f"(LoRA {ranks['ffn']['lora']}), {a.init} SVD initialisation; every layer fine-tuned once, layer-wise (MSE), "
        f"on base hidden states of {run.report['data']['train_clips']} unlabelled fillets-cs train clips"
        + (f" + {a.audio_clips} clips each of {a.train_audio.replace(',', ', ')}" if a.train_audio else "")
        + f" packed into {len(run.train_ids)} windows of 5-28 s ({a.epochs} epochs, batch 4, peak lr {a.lr}, "
        f"linear decay); twin training {twins_s / 60:.1f} min in total.",
        "- Level = share of the KEPT encoder layers' parameters removed by twins; 25% keeps the twins with the "
        "lowest measured error (final encoder output change on "
        f"{len(run.heldout_ids)} held-out dev clips), no retraining.",
        f"- Pruned layers chosen by 1 - cos(layer input, output); the layer after each cut is retrained as a "
        f"bridge ({a.bridge_epochs} epoch).",
        f"- Recovery rows (`+rec`): the built encoder fine-tuned end to end ({a.recover_epochs} epochs, peak lr "
        f"{a.recover_lr}, linear decay) from the cached input of the first layer to base's encoder output after "
        "the final LayerNorm, on the same windows; `out err` = relative error of the encoder output on the "
        "held-out clips' speech frames before -> after."
        + (f" `+kl`: plus {a.recover_kl:g} x the KL divergence between base's frozen decoder reading base's and the "
           "compressed encoder output, teacher-forced on base's own greedy transcript of each window."
           if a.recover_kl > 0 else "")
        + (f" `+rec +mix`: the same recovery on those windows plus windows of {a.recover_audio.replace(',', ', ')} "
           f"({a.audio_clips} clips each)." if any(c["cell"].endswith("-mix") for c in cells) else "")
        + (" tts-en is synthetic English speech (training only)." if "tts-en" in a.train_audio + a.recover_audio else ""),
        f"- WER: PyTorch engine, greedy; LibriVox = all 5 English clips (Whisper English normaliser); "
        f"Czech = first {a.cs_clips} clips of fillets-cs:test (basic normaliser). Base row = stock whisper-base.",
        "- Paper (AdaPTwin, Whisper base, encoder 50%, r_a=32, l_a=8, r_f=162, l_f=18): LJSpeech WER 2.99 -> 4.18.",
        "", "| AdaPTwin level | pruned | twin layers (orig.) | pruned layers (orig.) | encoder-layer params "
            "| encoder params | total params | LibriVox WER (Δ) | Czech WER (Δ) |",
        "|---|---|---|---|---|---|---|---|---|"]
    # recovered cells sit right under their layer-wise cell
    for c in cells:
        lw, cw = c["librivox"]["wer"], c["fillets-cs:test"]["wer"]
        dl, dc = lw - base["librivox"]["wer"], cw - base["fillets-cs:test"]["wer"]
        rec = c.get("recovery")
        mix = " +mix" if rec and rec.get("windows", 0) > len(run.train_ids) else ""
        kl = f" +kl{rec['kl_weight']:g}" if rec and rec.get("kl_weight") else ""
        tag = (f" +rec{mix}{kl} (out err {rec['heldout_speech_output_error_before']:.3f} -> "
               f"{rec['heldout_speech_output_error']:.3f})") if rec else ""
        lines.append(
            f"| {c['level']:.0%} ({c['compression_of_kept_layers']:.1%}){tag} | {c['prune']} | {c['twins'] or '-'} "
            f"| {c['pruned'] or '-'} | {c['encoder_layer_params'] / 1e6:.2f}M (-{c['encoder_layer_reduction']:.1%}) "
            f"| {c['encoder_params'] / 1e6:.2f}M | {c['params'] / 1e6:.2f}M | {lw:.2f} ({dl:+.2f}) | {cw:.2f} ({dc:+.2f}) |")
    errs = run.report.get("selection_errors", {})
    for key, per_layer in errs.items():
        lines.append(f"- Measured twin errors, pruned {key}: " + ", ".join(
            f"layer {j}: {e['score']:.3f} (speech {e['speech']:.3f})" for j, e in per_layer.items())
            + " (relative change of the final encoder output on held-out clips, speech + padding frames).")
    bridges = run.report.get("bridges", {})
    eval_s = sum(json.loads(f.read_text()).get("wall_seconds", 0) for f in (a.out / "eval").glob("*.json"))
    spent = {"hidden_states_min": round(run.report.get("hidden_states_seconds", 0) / 60, 1) or "not recorded",
             "twin_training_min": round(twins_s / 60, 1),
             "bridges_min": round(sum(b.get("seconds", 0) for b in bridges.values()) / 60, 1) or "not recorded",
             "recovery_min": round(sum((c.get("recovery") or {}).get("seconds", 0) for c in cells) / 60, 1),
             "evaluation_min": round(eval_s / 60, 1)}
    lines += ["", f"Time spent (all sessions): {json.dumps(spent)}; this session: {json.dumps(timing)}; "
                  f"peak RSS {peak:.2f} GiB; torch threads {a.threads} on a 2-core CPU.", ""]
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"{a.name}.md").write_text("\n".join(lines))
    keep = ("twins", "prune", "bridges", "selection_errors", "ranks", "data", "options")
    (a.results / f"{a.name}.json").write_text(json.dumps(
        {"cells": cells, "timing_last_session": timing, "time_spent": spent, "peak_rss_gib": round(peak, 2),
         "recipe": {k: run.report.get(k) for k in keep}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
