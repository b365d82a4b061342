"""Choosing the shortlist head's (R, N) by measurement (issue #16).

For every clip of each set: stock base decodes greedily (mlx-whisper's decoding, timestamps
on, as ``mlx-bald eval`` does); the final hidden state at every generated position is taken
by teacher forcing that path; then, for each (R, N), the shortlist head's logits go through
the same logit filters (suppress tokens, blank, timestamp rules) with the same context, and
their argmax is compared with base's token. A clip whose every position agrees decodes to an
identical transcript with that head (greedy is deterministic: by induction on positions), so
"identical-transcript rate" is exact, not sampled. Speed: decoder tokens/s at batch 1 with
each head swapped into the same loaded model (bench's protocol, 64 tokens, medians).

    python -m benchmarks.studies.shortlist_study --sets librivox,asterisk-en:test,fillets-cs:test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"
RANKS = (64, 128, 256)
TOPS = (64, 256, 1024, 2048, 4096, 8192, 16384)


def _paths(model, clips, language: str):
    """Per clip: (initial tokens, generated tokens incl. end-of-text, hidden states [T, d])."""
    from mlx_whisper.decoding import DecodingOptions, DecodingTask

    from benchmarks.engines import window_mel

    dec, out = model.decoder, []
    options = DecodingOptions(language=language, temperature=0.0, fp16=False)
    for clip in tqdm(clips, desc="base greedy + hidden states", file=sys.stderr, unit="clip"):
        mel = window_mel(clip.audio, model.dims.n_mels)
        result = model.decode(mel, options)
        task = DecodingTask(model, options)
        initial = list(task.initial_tokens)
        # end-of-text was chosen unless decoding stopped at the length limit (a loop)
        ended = [task.tokenizer.eot] if len(result.tokens) < task.sample_len else []
        path = initial + list(result.tokens) + ended
        captured = []
        original = dec.project_logits
        dec.project_logits = lambda h: captured.append(h) or original(h)
        try:
            dec(mx.array([path[:-1]]), model.embed_audio(mel[None]))
        finally:
            del dec.project_logits
        hidden = np.array(captured[0][0, len(initial) - 1:], dtype=np.float64)
        out.append((initial, path[len(initial):], hidden, task.logit_filters))
    return out


def agreement(paths, embedding: np.ndarray, factors, n_text: int, ranks=RANKS, tops=TOPS) -> dict:
    """For each (R, N): token agreement and identical-transcript counts against base.
    ``factors``: ``shortlist_factors`` at the largest rank (a rank-r head is their first r)."""
    down, up = factors
    configs = [(r, n) for r in ranks for n in tops] + [("full", "full")]
    agree = {c: 0 for c in configs}
    identical = {c: 0 for c in configs}
    positions = 0
    for initial, generated, hidden, filters in tqdm(paths, desc="(R, N) grid", file=sys.stderr, unit="clip"):
        full = (hidden @ embedding.T).astype(np.float32)            # [T, V]
        rows = []
        for r in ranks:
            preview = (hidden @ down[:r].T) @ up[:, :r].T           # [T, n_text]
            for n in tops:
                logits = full.copy()
                top = np.argpartition(-preview, n - 1, axis=-1)[:, :n]
                text = preview.copy()
                np.put_along_axis(text, top, np.take_along_axis(full[:, :n_text], top, -1), -1)
                logits[:, :n_text] = text
                rows.append(logits)
        rows.append(full)
        stacked = np.stack(rows, axis=1).astype(np.float32)         # [T, C, V]
        ok = np.ones(len(configs), dtype=bool)
        for j, token in enumerate(generated):
            context = mx.array([initial + generated[:j]] * len(configs))
            logits = mx.array(stacked[j])
            for f in filters:
                logits = f.apply(logits, context)
            hit = np.array(mx.argmax(logits, axis=-1)) == token
            for c, h in zip(configs, hit):
                agree[c] += int(h)
            ok &= hit
        positions += len(generated)
        for c, good in zip(configs, ok):
            identical[c] += int(good)
    key = lambda c: "full" if c[0] == "full" else f"{c[0]}:{c[1]}"  # noqa: E731
    return {"clips": len(paths), "positions": positions,
            "configs": {key(c): {"token_agreement": agree[c] / positions,
                                 "identical_transcripts": identical[c] / len(paths)} for c in configs}}


def speeds(model, features: mx.array, factors, n_text: int, tokens: int = 64,
           repeats: int = 3, ranks=RANKS, tops=TOPS) -> dict:
    """Decoder tokens/s at batch 1 for the full head and each (R, N), alternating, medians."""
    from benchmarks.engines import MLXEngine, prompt_tokens
    from mlx_bald.models.layers import ShortlistHead

    down, up = factors
    dec = model.decoder
    heads = {"full": None}
    for r in ranks:
        for n in tops:
            h = ShortlistHead(model.dims.n_text_state, n_text, r, n)
            h.preview_down.weight = mx.array(down[:r].astype(np.float32))
            h.preview_up.weight = mx.array(up[:, :r].astype(np.float32))
            heads[f"{r}:{n}"] = h
    engine = MLXEngine.__new__(MLXEngine)  # its decode loop, on this already-loaded model
    engine.model, engine.dims = model, model.dims
    engine.prompt = prompt_tokens(model.dims.n_vocab)
    times = {k: [] for k in heads}
    for _ in range(repeats):
        for key, head in heads.items():
            if head is None:
                dec.pop("head", None)
            else:
                dec["head"] = head
            engine.decode(features, 1, 4)
            wall, n, _ = engine.decode(features, 1, tokens)
            times[key].append(n / wall)
    dec.pop("head", None)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--sets", default="librivox,asterisk-en:test,fillets-cs:test")
    p.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    p.add_argument("--out", type=Path, default=RESULTS / "shortlist_study.json")
    p.add_argument("--speeds-only", action="store_true",
                   help="re-measure only the tokens/s of an earlier --out (e.g. on a quiet machine)")
    args = p.parse_args(argv)

    from benchmarks.engines import window_mel
    from converters.shortlist_head import shortlist_factors
    from mlx_bald.data import load_set
    from mlx_bald.transcribe import get_model
    from mlx_bald.vocab import first_special

    model = get_model(args.model, mx.float32)
    embedding = np.array(model.decoder.token_embedding.weight, dtype=np.float64)
    n_text = first_special(model.dims.n_vocab)
    factors = shortlist_factors(embedding, n_text, max(RANKS))
    result = {"model": args.model, "ranks": list(RANKS), "tops": list(TOPS), "sets": {}}
    if args.speeds_only:
        result = json.loads(args.out.read_text())
    first_clip = load_set(args.sets.split(",")[0])[0] if args.speeds_only else None
    for name in [] if args.speeds_only else args.sets.split(","):
        clips = load_set(name)[: args.limit]
        first_clip = first_clip or clips[0]
        t0 = time.perf_counter()
        paths = _paths(model, clips, clips[0].language)
        result["sets"][name] = {**agreement(paths, embedding, factors, n_text),
                                "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: {k: v for k, v in result["sets"][name].items() if k != "configs"}}),
              file=sys.stderr)
    features = model.embed_audio(window_mel(first_clip.audio, model.dims.n_mels)[None])
    result["tokens_per_s_b1"] = speeds(model, features, factors, n_text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


def table(result: dict) -> str:
    sets = list(result["sets"])
    head = "| head (R:N) | " + " | ".join(f"{s} tokens / transcripts" for s in sets) + " | tok/s b1 | vs full |"
    lines = [head, "|" + "---|" * (len(sets) + 3)]
    full = result["tokens_per_s_b1"]["full"]
    for key, tps in result["tokens_per_s_b1"].items():
        cells = []
        for s in sets:
            c = result["sets"][s]["configs"][key]
            cells.append(f"{100 * c['token_agreement']:.2f}% / {100 * c['identical_transcripts']:.1f}%")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {tps:.1f} | {tps / full:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
