"""The benchmark run: every model in ONE process, alternating, warm-up first, medians of
repeated runs, speed-ups computed within the run. Writes bench.json, bench.md, pareto.png.

Protocol (the paper's, BaldWhisper: M1 Air, batch 10, 256 generated tokens):
- decoder tokens/s: greedy generation of exactly ``tokens`` per sequence (end-of-text
  suppressed) at each batch size, on the encoder output of a real clip, through the model's
  kv-cache path; tokens/s = batch x tokens / wall time (prompt pass included).
- encoder ms per 30 s window: ``embed_audio`` on each clip's padded window, timed inside the
  end-to-end runs (one window per clip per round), median.
- end-to-end RTF (token-matched): mel + encoder + greedy decoding of as many tokens as stock
  base produced on each real clip; the same work for every model, trained or not.
- transcription and WER: mlx-whisper's ``transcribe`` (faster-whisper's for the peer), greedy,
  on the real sets -- ONLY for models with real weights (stock, or trained folders given on
  the command line). Compressed speed variants carry untrained weights: speed only.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx

from benchmarks import cost_model
from benchmarks.engines import FasterWhisperEngine, MLXEngine
from benchmarks.lineup import BenchConfig, Entry, build_entries, load_runner, machine_info
from benchmarks.paper import PAPER, PAPER_OF, TARGETS

SCHEMA = "mlx-bald-bench/1"

__all__ = ["BenchConfig", "run", "write_outputs", "PAPER", "PAPER_OF", "TARGETS"]


def _say(cfg: BenchConfig, msg: str) -> None:
    if cfg.log:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- measuring -------------------------------------------------------------------------
def _mlx_peak(runner, fn) -> tuple[object, float | None]:
    """(fn(), peak bytes attributable to this model: its weights + the run's extra memory)."""
    if not isinstance(runner, MLXEngine):
        return fn(), None
    mx.synchronize()
    active = mx.get_active_memory()
    mx.reset_peak_memory()
    result = fn()
    return result, runner.resident_bytes() + max(0, mx.get_peak_memory() - active)


def _rotate(items: list, r: int) -> list:
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def run(cfg: BenchConfig) -> dict:
    """Measure every model; returns the bench.json dict."""
    from mlx_bald.data import load_set

    t_start = time.perf_counter()
    skipped: list[dict] = []
    info = machine_info()
    _say(cfg, f"machine: {info['cpu']}, {info['cores']} cores, MLX {info['mlx']} on {info['mlx_device']}")
    entries = build_entries(cfg, skipped)
    _load(cfg, entries)
    sets = {s: load_set(s)[: (1 if cfg.quick else cfg.set_limit) or None] for s in cfg.sets}
    first_set = next(iter(sets))
    clip0, e2e_clips = sets[first_set][0], sets[first_set]
    n_tok = 12 if cfg.quick else cfg.tokens
    batches = (1, 2) if cfg.quick else cfg.batches
    samples = {e.key: {**{f"{p}b{b}": [] for b in batches for p in ("", "step_")}, "e2e": [], "e2e_enc": [], "peak": {}}
               for e in entries}

    _say(cfg, "warm-up")
    features = {}
    for e in entries:
        features[e.key] = e.runner.encode(e.runner.mel(clip0.audio))[1]
        for b in batches:
            e.runner.decode(features[e.key], b, 4)
    texts = _accuracy_pass(cfg, entries, sets)
    # the end-to-end work per clip: as many tokens as real decoding with stock base produced
    ref_rows = texts.get("base", {}).get(first_set)
    if ref_rows and not cfg.quick:
        n_per_clip = [r["tokens"] + 1 for r in ref_rows]
        n_source = "tokens stock base generated (+ end-of-text)"
    else:
        n_per_clip = [max(2, round(3 * c.seconds)) for c in e2e_clips]
        n_source = "3 tokens per second of audio (no real-weight base in this run)"
    _speed_rounds(cfg, entries, samples, features, batches, n_tok, skipped)
    _e2e_rounds(cfg, entries, samples, e2e_clips, n_per_clip)
    speculative = _speculative(cfg, entries, e2e_clips) if cfg.speculative else None

    audio_s = sum(c.seconds for c in e2e_clips)
    for e in entries:
        e.record.update(_summarise(e, samples[e.key], texts.get(e.key), batches, n_tok, audio_s,
                                   cfg, sets, features[e.key]))
    _speedups(entries, batches)
    dtype = next((e.runner.dtype for e in entries if isinstance(e.runner, MLXEngine)), None)
    return {
        "schema": SCHEMA, "quick": cfg.quick, "speculative": speculative,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["mlx-bald", "bench", *sys.argv[2:]]) if "bench" in sys.argv else None,
        "machine": {**info, "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "protocol": {"tokens": n_tok, "batches": list(batches), "repeats": cfg.repeats,
                     "mlx_whisper_repeats": min(cfg.repeats, cfg.mlx_whisper_repeats),
                     "e2e_repeats": cfg.e2e_repeats, "sets": list(cfg.sets),
                     "decode_clip": clip0.id, "e2e_clips": len(e2e_clips),
                     "e2e_audio_s": round(audio_s, 2), "e2e_tokens_per_clip": n_per_clip,
                     "e2e_tokens_source": n_source, "dtype": str(dtype), "cost_chip": cfg.chip,
                     "note": "Compressed speed variants carry UNTRAINED weights (shape builder in "
                             "benchmarks/variants.py): their speed is real, their WER is not "
                             "measured. WER comes only from stock models and trained folders "
                             "given with --model."},
        "models": [e.record for e in entries],
        "skipped": skipped,
        "paper": PAPER,
        "targets": _targets(entries, batches),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _load(cfg: BenchConfig, entries: list[Entry]) -> None:
    for e in entries:
        t0 = time.perf_counter()
        e.runner = load_runner(e)
        e.record = {**e.record, "key": e.key, "label": e.label, "engine": e.engine, "weights": e.weights,
                    "folder": str(e.folder), "dims": e.dims, "compression": e.spec.to_dict(),
                    "load_s": round(time.perf_counter() - t0, 2), "disk_bytes": e.runner.disk_bytes()}
        e.record["params"] = (e.runner.param_count() if isinstance(e.runner, MLXEngine)
                              else cost_model.cost(e.dims, e.spec).params)
        _say(cfg, f"loaded {e.key} ({e.record['params'] / 1e6:.1f} M params)")


def _accuracy_pass(cfg: BenchConfig, entries: list[Entry], sets: dict) -> dict[str, dict[str, list]]:
    """Real transcription of every clip, models alternating; real-weight models only."""
    texts: dict[str, dict[str, list]] = {}
    real = [e for e in entries if e.weights in ("real", "trained")]
    for set_name, clips in sets.items():
        _say(cfg, f"transcribing {len(clips)} clips of {set_name} with {len(real)} models")
        for e in real:
            texts.setdefault(e.key, {})[set_name] = []
        for clip in clips:
            for e in real:
                if clip.language != "en" and e.dims["n_vocab"] < 51865:
                    continue  # English-only model
                opts = {"sample_len": 16} if cfg.quick else {}
                dt, text, n = e.runner.transcribe(clip.audio, language=clip.language, **opts)
                texts[e.key][set_name].append({"id": clip.id, "seconds": round(clip.seconds, 3),
                                               "reference": clip.text, "hypothesis": text,
                                               "tokens": n, "wall_s": round(dt, 3)})
    return texts


def _speed_rounds(cfg, entries, samples, features, batches, n_tok, skipped) -> None:
    for r in range(cfg.repeats):
        _say(cfg, f"speed round {r + 1}/{cfg.repeats}")
        for e in _rotate(entries, r):
            if e.engine == "mlx-whisper" and r >= cfg.mlx_whisper_repeats:
                continue
            s = samples[e.key]
            for b in batches:
                (dt, n, step), peak = _mlx_peak(e.runner, lambda: e.runner.decode(features[e.key], b, n_tok))
                note = {"model": e.key, "reason": f"generated {n} of {n_tok} tokens at batch {b}"}
                if n != n_tok and note not in skipped:
                    skipped.append(note)
                s[f"b{b}"].append(dt)
                if step is not None:
                    s[f"step_b{b}"].append(step)
                if peak:
                    s["peak"][f"b{b}"] = max(peak, s["peak"].get(f"b{b}", 0))


def _e2e_rounds(cfg, entries, samples, clips, n_per_clip) -> None:
    for r in range(cfg.e2e_repeats):
        _say(cfg, f"end-to-end round {r + 1}/{cfg.e2e_repeats} ({len(clips)} clips)")
        for i, clip in enumerate(clips):
            for e in _rotate(entries, r + i):
                (tot, enc), peak = _mlx_peak(e.runner, lambda: e.runner.matched_e2e(clip.audio, n_per_clip[i]))
                samples[e.key]["e2e"].append((r, tot))
                samples[e.key]["e2e_enc"].append(enc)
                if peak:
                    samples[e.key]["peak"]["e2e"] = max(peak, samples[e.key]["peak"].get("e2e", 0))
    for e in entries:  # the peer's memory: resident-set growth during one clip
        if isinstance(e.runner, FasterWhisperEngine):
            samples[e.key]["peak"]["e2e"] = e.runner.peak_rss_during(
                lambda: e.runner.matched_e2e(clips[0].audio, n_per_clip[0]))


def _speculative(cfg: BenchConfig, entries: list[Entry], clips: list) -> dict:
    """Base as target with each draft, on the end-to-end clips (benchmarks/speculative.py)."""
    from benchmarks.lineup import labelled_model
    from benchmarks.speculative import default_drafts, measure
    from mlx_bald.paths import cache_dir

    base = next(e for e in entries if e.key == "base")
    drafts = {**default_drafts(base.folder, cache_dir() / "bench", cfg.quick),
              **dict(labelled_model(item) for item in cfg.drafts)}
    _say(cfg, f"speculative decoding: {len(drafts)} drafts on {len(clips)} clips")
    return measure(base.folder, drafts, clips, base.runner.dtype, repeats=1 if cfg.quick else cfg.repeats,
                   chip=cfg.chip, sample_len=16 if cfg.quick else None, log=lambda m: _say(cfg, m))


def _med(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _summarise(e: Entry, s: dict, texts: dict | None, batches, n_tok: int, audio_s: float,
               cfg: BenchConfig, sets_of: dict, features) -> dict:
    from mlx_bald.evaluate import corpus_wer

    # encoder: every 30 s window of the end-to-end rounds (one per clip per round)
    rec: dict = {"encoder_ms": 1e3 * _med(s["e2e_enc"]),
                 "encoder_runs_ms": [round(1e3 * x, 1) for x in s["e2e_enc"]]}
    rec["decode"] = {}
    for b in batches:
        t = _med(s[f"b{b}"])
        step = _med(s[f"step_b{b}"])  # median one-token step: robust to bursts of load
        rec["decode"][f"b{b}"] = {"tok_s": b * n_tok / t, "ms_per_step": 1e3 * t / n_tok,
                                  "runs_s": [round(x, 3) for x in s[f"b{b}"]],
                                  "median_step_ms": None if step is None else 1e3 * step,
                                  "tok_s_median_step": None if step is None else b / step}
    per_round = {}
    for r, tot in s["e2e"]:
        per_round[r] = per_round.get(r, 0.0) + tot
    e2e_total = _med(list(per_round.values()))
    enc_total = float(np.sum(s["e2e_enc"])) / max(1, len(per_round))
    rec["e2e"] = {"rtf": e2e_total / audio_s, "wall_s": e2e_total, "audio_s": audio_s,
                  "encoder_share": enc_total / e2e_total if e2e_total else None}
    rec["peak_mb"] = {k: round(v / 2**20, 1) for k, v in s["peak"].items()}
    if texts:
        rec["transcribe"] = {}
        for set_name, rows in texts.items():
            if not rows:
                continue
            lang = next(c.language for c in sets_of[set_name])
            wer, norm = corpus_wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows], lang)
            wall = sum(r["wall_s"] for r in rows)
            audio = sum(r["seconds"] for r in rows)
            rec["transcribe"][set_name] = {"wer": round(wer, 2), "normalizer": norm, "n_clips": len(rows),
                                           "audio_s": round(audio, 2), "rtf": wall / audio, "rows": rows}
    c = cost_model.cost(e.dims, e.spec, bytes_per_weight=1.0 if e.engine == "faster-whisper" else 2.0)
    rec["cost"] = {**c.to_dict(), **cost_model.floors(c, cfg.chip, tuple(batches))}
    if isinstance(e.runner, MLXEngine) and e.engine == "mlx-bald":
        rec["profile"] = {f"b{b}": e.runner.profile_step(features, b, position=n_tok // 2 + 4)
                          for b in batches}
    return rec


def _speedups(entries: list[Entry], batches) -> None:
    refs = {k: next((e.record for e in entries if e.key == k), None)
            for k in ("base", "mlx-whisper base", "faster-whisper base")}
    for e in entries:
        e.record["speedup"] = {}
        for name, ref in refs.items():
            if ref is None:
                continue
            sp = {}
            for b in batches:
                mine, theirs = e.record["decode"][f"b{b}"], ref["decode"][f"b{b}"]
                sp[f"b{b}"] = mine["tok_s"] / theirs["tok_s"]
                if mine["tok_s_median_step"] and theirs["tok_s_median_step"]:
                    sp[f"b{b}_median_step"] = mine["tok_s_median_step"] / theirs["tok_s_median_step"]
            sp["encoder"] = ref["encoder_ms"] / e.record["encoder_ms"]
            sp["e2e"] = ref["e2e"]["rtf"] / e.record["e2e"]["rtf"]
            e.record["speedup"][f"vs {name}"] = sp


def _targets(entries: list[Entry], batches) -> dict:
    rec = {e.key: e.record for e in entries}
    out = {}
    tiny = rec.get("tiny.en")
    for key, target in TARGETS.items():
        if key not in rec or "vs base" not in rec[key]["speedup"]:
            continue
        sp = rec[key]["speedup"]["vs base"]
        b = max(batches)
        out[key] = {"target_speedup": target, "batch": b, "speedup": sp[f"b{b}"],
                    "speedup_b1": sp.get("b1"), "met": sp[f"b{b}"] >= target,
                    "speedup_median_step": sp.get(f"b{b}_median_step"),
                    "met_median_step": (sp[f"b{b}_median_step"] >= target) if f"b{b}_median_step" in sp else None,
                    "faster_than_tiny": (rec[key]["decode"][f"b{b}"]["tok_s"] > tiny["decode"][f"b{b}"]["tok_s"])
                    if tiny else None}
    return out


def write_outputs(result: dict, out: Path, write_json: bool = True) -> dict[str, Path]:
    """bench.json, bench.md and pareto.png under ``out``; for a full run whose ``out`` sits
    beside a results page (benchmarks/README.md with the markers), that page's table too."""
    from benchmarks import plot, report

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "pareto.png"}
    if write_json:
        paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["md"].write_text(report.markdown(result, png_name=paths["png"].name))
    plot.pareto(result, paths["png"])
    page = out.parent / "README.md"
    if not result["quick"] and page.exists() and PAGE_BEGIN in page.read_text():
        paths["page"] = _update_page(page, report.markdown(result, png_name=f"{out.name}/{paths['png'].name}"))
    return paths


PAGE_BEGIN, PAGE_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _update_page(page: Path, body: str) -> Path:
    """Replace the generated part of the results page (between the markers) with this run."""
    text = page.read_text()
    head, _, rest = text.partition(PAGE_BEGIN)
    _, _, tail = rest.partition(PAGE_END)
    lines = [("## Latest run: " + l[2:]) if l.startswith("# ") else ("#" + l) if l.startswith("## ") else l
             for l in body.strip().splitlines()]  # one level down: the page has its own title
    page.write_text(f"{head}{PAGE_BEGIN}\n\n" + "\n".join(lines) + f"\n\n{PAGE_END}{tail}")
    return page
