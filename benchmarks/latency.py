"""Latency of one short utterance, end to end, measured side by side in one run.

- **Utterances** of about 2, 5 and 10 s of real speech: the asterisk-en:test and LibriVox
  clips (and pairs of LibriVox clips joined by 0.3 s of silence) nearest each length.
- **End to end**, per utterance: ms of mlx-whisper's ``transcribe`` on whisper-base (the product's
  path: temperature fallback, timestamps, language "en"), split into mel, encoder, decoder and
  host (the rest: transcribe's own bookkeeping), for today's path (mlx-whisper's decoding loop,
  host-side filters) and the new one (``mlx_bald.device_loop``), alternating, medians of rounds.
- **decode_loop_ratio**: real greedy decoding (timestamps on) of every utterance from its encoder
  output with the new loop, tokens/s, over the bench's loop (``MLXEngine.decode``: argmax and one
  eval per step, no filters) generating the same number of tokens from the same features; the
  new loop's tokens must equal mlx-whisper's. Also mlx-whisper's own loop and the bench's
  256-token protocol, for reference.
- **WER** of whisper-base on asterisk-en:test and LibriVox (Whisper's English normaliser,
  ``mlx-bald eval --decode fallback``, the product's decoder).
- **concurrent_ratio**: 8 requests at once / one after another through the server
  (``benchmarks.serving.batching``), if the server can be started.
- **short**: the same transcription on the short-context model (``--short-model``, built by
  ``mlx-bald compress --recipe short-context``): the encoder runs on the clip's own frames
  (rounded up to 2 s) plus the model's registers, with the new loop. **short_speedup**: median
  over the 3-5.5 s utterances of today's base path ms / the short path's ms. Its WER is measured
  as base's, and the server's 8 concurrent requests are measured on both models.
- M1 figures of the cost model (bandwidth/compute floors) per utterance length.

    python -m benchmarks.latency --json
    python -m benchmarks.latency --per-length 1 --rounds 1 --wer-limit 10 --no-server   # smaller
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (2.0, 5.0, 10.0)
GAP = 0.3  # seconds of silence between two joined clips
NOT_BUILT = "not built: no short-context model (mlx-bald compress --recipe short-context --out runs/base-short)"
PATHS = ("today", "new", "short")
SHORT_RANGE = (3.0, 5.5)  # seconds: the utterances short_speedup is measured on


def utterances(per_length: int) -> list[dict]:
    """``per_length`` real utterances nearest each of LENGTHS: id, seconds, audio, reference."""
    from mlx_bald.data import load_set

    singles = [c for s in ("asterisk-en:test", "librivox") for c in load_set(s)]
    pool = [(c.id, c.audio, c.text) for c in singles]
    lib = [c for c in singles if c.id.startswith("sense")]
    gap = np.zeros(int(GAP * 16_000), dtype=np.float32)
    pool += [(f"{a.id}+{b.id[-4:]}", np.concatenate([a.audio, gap, b.audio]), f"{a.text} {b.text}")
             for a, b in zip(lib, lib[1:])]
    out = []
    for length in LENGTHS:
        near = sorted(pool, key=lambda p: abs(len(p[1]) / 16_000 - length))[:per_length]
        out += [{"length": length, "id": i, "seconds": round(len(a) / 16_000, 2), "audio": a, "reference": t}
                for i, a, t in near]
    return out


class TodaysPath:
    """The model as mlx-bald decoded before the device loop: mlx-whisper's decoding loop and filters."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode(self, mel, options=None, **kwargs):
        from mlx_whisper.decoding import DecodingOptions, decode

        return decode(self.model, mel, replace(options or DecodingOptions(), **kwargs))


class Timed:
    """A model for mlx-whisper's ``transcribe`` whose ``decode`` runs the encoder first and
    times encoder and decoder apart (both synced), on the wrapped path."""

    def __init__(self, path) -> None:
        self.path, self.encoder_s, self.decoder_s, self.windows = path, 0.0, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.path, name)

    def decode(self, mel, options):
        t0 = time.perf_counter()
        features = self.path.embed_audio(mel[None] if mel.ndim == 2 else mel)
        mx.eval(features)
        t1 = time.perf_counter()
        result = self.path.decode(features[0] if mel.ndim == 2 else features, options)
        self.encoder_s += t1 - t0
        self.decoder_s += time.perf_counter() - t1
        self.windows += 1
        return result


def end_to_end(model, audio: np.ndarray, path: str) -> dict:
    """One transcription through mlx-whisper's transcribe: ms of mel, encoder, decoder, host.
    ``path``: today (mlx-whisper's loop), new (the device loop), short (the device loop on a
    short-context model's short context)."""
    import importlib

    import mlx_whisper

    from mlx_bald.short_context import frames_for

    mt = importlib.import_module("mlx_whisper.transcribe")  # the package's name is the function

    timed = Timed(TodaysPath(model) if path == "today" else model)
    mel_s = [0.0]
    log_mel = mt.log_mel_spectrogram

    def timed_mel(*args, **kwargs):
        t0 = time.perf_counter()
        out = log_mel(*args, **kwargs)
        mx.eval(out)
        mel_s[0] += time.perf_counter() - t0
        return out

    key = f"latency:{path}:{id(model)}"
    mt.ModelHolder.model, mt.ModelHolder.model_path = timed, key
    mt.log_mel_spectrogram = timed_mel
    try:
        t0 = time.perf_counter()
        with frames_for(model, len(audio), None if path == "short" else False):  # short: where it holds
            out = mlx_whisper.transcribe(audio, path_or_hf_repo=key, language="en", fp16=False, verbose=None)
        total = time.perf_counter() - t0
    finally:
        mt.log_mel_spectrogram = log_mel
    ms = {"mel": mel_s[0], "encoder": timed.encoder_s, "decoder": timed.decoder_s}
    ms["host"] = total - sum(ms.values())
    return {"total_ms": 1e3 * total, **{f"{k}_ms": 1e3 * v for k, v in ms.items()},
            "windows": timed.windows, "text": out["text"].strip()}


def decode_loops(model, engine, utts: list[dict], rounds: int) -> dict:
    """Greedy decoding (timestamps on) of every utterance's window from its encoder output: the
    new loop, mlx-whisper's loop and the bench's loop for the same token count, alternating."""
    from mlx_whisper.decoding import DecodingOptions
    from mlx_whisper.decoding import decode as mlx_whisper_decode

    from benchmarks.engines import window_mel
    from mlx_bald.decoding import decode

    options = DecodingOptions(language="en", temperature=0.0, fp16=False)
    feats = []
    for u in utts:
        f = model.embed_audio(window_mel(u["audio"], model.dims.n_mels)[None])
        mx.eval(f)
        feats.append(f)
    new_tokens = [decode(model, f, options)[0].tokens for f in feats]  # also the warm-up
    old_tokens = [mlx_whisper_decode(model, f, options)[0].tokens for f in feats]
    counts = [len(t) + 1 for t in new_tokens]  # end-of-text included, as the bench counts
    runners = {"new loop": lambda f, n: decode(model, f, options),
               "mlx-whisper loop": lambda f, n: mlx_whisper_decode(model, f, options),
               "bench loop": lambda f, n: engine.decode(f, 1, n)}
    wall = {k: [] for k in runners}
    for r in range(rounds):
        total = dict.fromkeys(runners, 0.0)
        for i, (f, n) in enumerate(zip(feats, counts)):
            names = list(runners)
            for name in names[i % 3:] + names[: i % 3]:
                t0 = time.perf_counter()
                runners[name](f, n)
                total[name] += time.perf_counter() - t0
        for k in runners:
            wall[k].append(total[k])
    n = sum(counts)
    tok_s = {k: n / float(np.median(v)) for k, v in wall.items()}
    protocol = engine.decode(feats[0], 1, 256)  # the bench's own protocol: 256 forced tokens
    return {"tokens": n, "rounds": rounds, "tok_s": tok_s,
            "identical_tokens": new_tokens == old_tokens,
            "bench_protocol_256_tok_s": 256 / protocol[0],
            "decode_loop_ratio": tok_s["new loop"] / tok_s["bench loop"],
            "mlx_whisper_loop_ratio": tok_s["mlx-whisper loop"] / tok_s["bench loop"]}


def m1_figures(folder: Path, utts: list[dict], tokens_per_s_audio: float) -> dict:
    """Cost-model floors on an M1 per length: a full 30 s encoder window plus the decoder steps
    of that many tokens (measured tokens per second of audio)."""
    from benchmarks import cost_model, variants

    c = cost_model.cost(variants.dims_of(folder), variants.spec_of(folder))
    bw, tf = cost_model.CHIPS["M1"]
    enc, step = c.encoder_floor_s(bw, tf), c.decode_floor_s(1, bw, tf)
    out = {}
    for length in LENGTHS:
        n = round(tokens_per_s_audio * length) + 4  # prompt pass and end-of-text, roughly
        out[f"{length:g}s"] = {"encoder_ms": 1e3 * enc, "decoder_ms": 1e3 * n * step,
                               "total_ms": 1e3 * (enc + n * step), "tokens": n}
    return out


def _short_model(name: str | None):
    """(folder, model) of the short-context model, or (None, None) when it is not there."""
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.hub import resolve_model
    from mlx_bald.load import load_model

    if not name:
        return None, None
    try:
        folder = resolve_model(name, "mlx")
    except MlxBaldError:
        return None, None
    model = load_model(folder, dtype=mx.float32)
    if model.spec.short_context_s is None:
        raise SystemExit(f"--short-model {name} was not tuned for a short context")
    return folder, model


def run(model_name: str, per_length: int, rounds: int, wer_limit: int | None, server: bool,
        wer: bool, log=print, e2e_on: bool = True, short_name: str | None = None, long_on: bool = True) -> dict:
    from benchmarks.engines import MLXEngine
    from mlx_bald.hub import resolve_model

    folder = resolve_model(model_name, "mlx")
    engine = MLXEngine(folder, dtype=mx.float32)
    model = engine.model
    short_folder, short_model = _short_model(short_name)
    models = {"today": model, "new": model, "short": short_model}
    paths = [p for p in PATHS if models[p] is not None]
    utts = utterances(per_length)
    log(f"{len(utts)} utterances: " + ", ".join(f"{u['id']} ({u['seconds']} s)" for u in utts))

    for path in paths if e2e_on else ():  # warm-up: first-call costs out of every path
        end_to_end(models[path], utts[0]["audio"], path)
    rows = {u["id"]: {"length": u["length"], "seconds": u["seconds"], **{p: [] for p in paths}}
            for u in utts} if e2e_on else {}
    for r in range(rounds if e2e_on else 0):
        log(f"end-to-end round {r + 1}/{rounds}")
        for i, u in enumerate(utts):
            k = (i + r) % len(paths)  # each path goes first as often as the others
            for path in paths[k:] + paths[:k]:
                rows[u["id"]][path].append(end_to_end(models[path], u["audio"], path))
    e2e = {}
    for uid, row in rows.items():
        e2e[uid] = {"length": row["length"], "seconds": row["seconds"]}
        for path in paths:
            runs = row[path]
            e2e[uid][path] = {k: round(float(np.median([x[k] for x in runs])), 1)
                              for k in ("total_ms", "mel_ms", "encoder_ms", "decoder_ms", "host_ms")}
            e2e[uid][path]["windows"] = runs[0]["windows"]
            e2e[uid][path]["text"] = runs[0]["text"]
        e2e[uid]["same_text"] = all(x["text"] == row["today"][0]["text"] for p in ("today", "new") for x in row[p])
        e2e[uid]["new_over_today"] = round(e2e[uid]["new"]["total_ms"] / e2e[uid]["today"]["total_ms"], 3)
        if "short" in paths:
            e2e[uid]["today_over_short"] = round(e2e[uid]["today"]["total_ms"] / e2e[uid]["short"]["total_ms"], 3)
    in_range = [r["today_over_short"] for r in e2e.values()
                if "today_over_short" in r and SHORT_RANGE[0] <= r["seconds"] <= SHORT_RANGE[1]]
    short_speedup = round(float(np.median(in_range)), 3) if in_range else None

    log("decoder loops")
    loops = decode_loops(model, engine, utts, rounds)
    audio_s = sum(u["seconds"] for u in utts)

    wers = {}
    if wer:
        from mlx_bald.evaluate import evaluate

        for set_name in ("asterisk-en:test", "librivox"):
            log(f"WER on {set_name}")
            res = evaluate(model_name, set_name, limit=wer_limit, progress=False, decode="fallback")
            wers[set_name] = {"whisper-base": res.wer, "short-context": None, "clips": res.n_clips}
            if short_folder is not None:
                short = evaluate(str(short_folder), set_name, limit=wer_limit, progress=False, decode="fallback")
                wers[set_name]["short-context"] = short.wer

    concurrent = {}
    if server:
        from benchmarks.serving import batching

        for key, name in (("whisper-base", model_name), ("short-context", short_folder)):
            if name is None:
                continue
            log(f"8 concurrent requests through the server: {key}")
            try:
                concurrent[key] = batching(str(name), None, 8)
            except Exception as e:  # say why, keep the rest
                concurrent[key] = {"error": f"{type(e).__name__}: {e}"}

    long_audio = {}
    if long_on and short_folder is not None:
        from benchmarks.serving import vad

        for key, name in (("whisper-base", model_name), ("short-context", str(short_folder))):
            log(f"long audio (LibriVox clips between silences): {key}")
            long_audio[key] = vad(name)

    main_server = concurrent.get("short-context") or concurrent.get("whisper-base") or {}
    return {
        "model": model_name, "short_model": short_name if short_folder else None,
        "device": str(mx.default_device()), "rounds": rounds,
        "short_speedup": short_speedup,
        "short_speedup_note": (f"median over the utterances of {SHORT_RANGE[0]:g}-{SHORT_RANGE[1]:g} s: today's "
                               "whisper-base path / the short-context path, end to end") if short_folder else NOT_BUILT,
        "concurrent_ratio": main_server.get("ratio"),
        "concurrent_ratio_whisper_base": concurrent.get("whisper-base", {}).get("ratio"),
        "decode_loop_ratio": round(loops["decode_loop_ratio"], 3),
        "wer": wers or None,
        "wer_note": "temperature fallback (the product's decoder), Whisper's English normaliser",
        "long_audio": long_audio or None,
        "end_to_end": e2e,
        "decode_loops": loops,
        "concurrent": concurrent,
        "m1_cost_model": m1_figures(folder, utts, (loops["tokens"] - len(utts)) / audio_s),
    }


def table(out: dict) -> str:
    lines = ["| utterance | s | today ms (mel / enc / dec / host) | new ms (mel / enc / dec / host) | new / today "
             "| short ms (mel / enc / dec / host) | today / short | same text (today, new) |",
             "|---|---:|---|---|---:|---|---:|---|"]
    for uid, r in out["end_to_end"].items():
        cell = lambda p: (f"{r[p]['total_ms']:.0f} ({r[p]['mel_ms']:.0f} / {r[p]['encoder_ms']:.0f} / "  # noqa: E731
                          f"{r[p]['decoder_ms']:.0f} / {r[p]['host_ms']:.0f})") if p in r else "–"
        ratio = f"{r['today_over_short']:.2f}" if "today_over_short" in r else "–"
        lines.append(f"| {uid} | {r['seconds']} | {cell('today')} | {cell('new')} | {r['new_over_today']:.2f} "
                     f"| {cell('short')} | {ratio} | {r['same_text']} |")
    d = out["decode_loops"]
    lines.append("")
    lines.append(f"decoder tok/s on these utterances ({d['tokens']} tokens): " + ", ".join(
        f"{k} {v:.1f}" for k, v in d["tok_s"].items()) + f"; bench protocol (256 tokens) {d['bench_protocol_256_tok_s']:.1f}")
    lines.append(f"decode_loop_ratio {out['decode_loop_ratio']} (mlx-whisper's loop: {d['mlx_whisper_loop_ratio']:.3f}); "
                 f"tokens identical to mlx-whisper's: {d['identical_tokens']}")
    for key, res in (out.get("long_audio") or {}).items():
        rows = "; ".join(f"{k} {v['wall_s']} s, WER {v['wer']}" for k, v in res["rows"].items())
        lines.append(f"long audio, {key}: {rows}")
    lines.append(f"short_speedup {out['short_speedup']} ({out['short_speedup_note']}); concurrent_ratio "
                 f"{out['concurrent_ratio']} (whisper-base: {out['concurrent_ratio_whisper_base']}); "
                 f"wer {json.dumps(out['wer'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mlx_bald.cli.arg_types import positive_int

    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--short-model", default="runs/base-short/mlx",
                   help="the short-context model timed beside it ('' to skip; skipped when not built)")
    p.add_argument("--per-length", type=positive_int, default=2, help="utterances per length (2, 5, 10 s)")
    p.add_argument("--rounds", type=positive_int, default=2, help="timed rounds (medians)")
    p.add_argument("--wer-limit", type=positive_int, default=None, help="clips per WER set (default: all)")
    p.add_argument("--no-wer", action="store_true")
    p.add_argument("--no-server", action="store_true", help="skip the 8 concurrent requests")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end transcriptions")
    p.add_argument("--no-long", action="store_true",
                   help="skip the long-audio check (a 95 s file: one by one, 30 s windows, VAD chunks; both models)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if a.json else print
    out = run(a.model, a.per_length, a.rounds, a.wer_limit, not a.no_server, not a.no_wer, log, not a.no_e2e,
              a.short_model, not a.no_long)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out) if a.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
