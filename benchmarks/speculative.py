"""Speculative decoding in the benchmark: base as the target, each draft proposing, on REAL
clips (acceptance comes from real decoding, not forced tokens).

Per draft, alternating with base alone on the same clips, after a warm-up, medians of rounds:
- decoder tokens/s at batch 1: greedy decoding of each clip's window (mlx-whisper's options,
  timestamps on) from its encoder output; tokens = what was generated (end-of-text included);
  a draft with base's encoder shares the features, so only decoding is timed;
- batch 10: speculative decoding does not apply to batches of several windows (each would
  accept a different number of tokens): it falls back to base, so its b10 is base's;
- end-to-end RTF: mlx-bald's ``transcribe`` of each clip (mel, encoder, decoding);
- identical: every clip's tokens equal base's;
- acceptance: share of proposals accepted and the per-token estimate (accepted / checked);
- cost model on the chip: the draft's step cost over base's at the bandwidth floor, the
  speed-up predicted at the measured per-token acceptance, and the acceptance 1.8x needs.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np

from benchmarks import cost_model, variants

SPECULATIVE_TARGET = 1.8  # issue #16: base + a BaldWhisper-shape draft with a shortlist head


def default_drafts(base: Path, root: Path, quick: bool) -> dict[str, Path]:
    """Drafts that exist without training: base + shortlist head; base's decoder pairs merged
    (weighted average, untrained: the BaldWhisper shape without its embedding) + shortlist head."""
    from benchmarks.lineup import shortlist_head

    head = shortlist_head(quick)
    recipes = variants.QUICK_RECIPES if quick else variants.RECIPES
    merged = variants.cached_variant(base, "merged3", recipes["merged3"], root)
    return {f"base + shortlist {head.rank}:{head.top}": variants.cached_shortlist(base, head, root),
            f"merged3 (untrained) + shortlist {head.rank}:{head.top}": variants.cached_shortlist(merged, head, root)}


def measure(base: Path, drafts: dict[str, Path], clips: list, dtype: mx.Dtype, repeats: int = 2,
            chip: str = "M1", sample_len: int | None = None, log=print, e2e: bool = True) -> dict:
    from mlx_whisper.decoding import DecodingOptions

    from benchmarks.engines import window_mel

    from mlx_bald.decoding import decode
    from mlx_bald.load import load_model
    from mlx_bald.speculative import SpeculativeWhisper
    from mlx_bald.transcribe import transcribe

    target = load_model(base, dtype=dtype)
    pairs = {label: SpeculativeWhisper(target, load_model(folder, dtype=dtype)) for label, folder in drafts.items()}
    windows = []
    for clip in clips:
        mel = window_mel(clip.audio, target.dims.n_mels).astype(dtype)
        options = DecodingOptions(language=clip.language if target.is_multilingual else None,
                                  temperature=0.0, fp16=dtype == mx.float16, sample_len=sample_len)
        features = target.embed_audio(mel[None])
        mx.eval(features)
        windows.append((mel, features, options))

    def run(decoder, mel, features, options):
        shared = decoder is target or decoder.shares_encoder
        t0 = time.perf_counter()
        result = (decode(decoder, features, options) if decoder is target else
                  decoder.decode(features if shared else mel[None], options))[0]
        return time.perf_counter() - t0, result.tokens

    runners = {"base": target, **pairs}
    for name, decoder in runners.items():  # warm-up
        run(decoder, *windows[0])
    base_tokens = [run(target, *w)[1] for w in windows]
    before = {label: replace(pair.stats) for label, pair in pairs.items()}
    wall = {name: [] for name in runners}
    identical = {label: True for label in pairs}
    for r in range(repeats):
        log(f"speculative round {r + 1}/{repeats} ({len(windows)} clips, {len(runners)} decoders)")
        total = {name: 0.0 for name in runners}
        for i, w in enumerate(windows):
            names = list(runners)
            for name in names[i % len(names):] + names[: i % len(names)]:
                dt, tokens = run(runners[name], *w)
                total[name] += dt
                if name in pairs:
                    identical[name] &= tokens == base_tokens[i]
        for name in runners:
            wall[name].append(total[name])
    n_tokens = sum(len(t) + 1 for t in base_tokens)
    tok_s = {name: n_tokens / float(np.median(ts)) for name, ts in wall.items()}

    e2e_s = {name: 0.0 if e2e else float("nan") for name in runners}  # mlx-bald's transcribe, one round
    audio_s = sum(c.seconds for c in clips)
    for clip in clips if e2e else []:
        for name in runners:
            t0 = time.perf_counter()
            transcribe(clip.audio, base, language=clip.language if target.is_multilingual else None,
                       temperature=0.0, condition_on_previous_text=False, dtype=dtype,
                       draft_model=None if name == "base" else str(drafts[name]))
            e2e_s[name] += time.perf_counter() - t0

    base_cost = cost_model.cost(variants.dims_of(base), variants.spec_of(base))
    bw, tf = cost_model.CHIPS[chip]
    base_step = base_cost.decode_floor_s(1, bw, tf)
    out = {"target": str(base), "clips": len(clips), "tokens": n_tokens, "repeats": repeats, "chip": chip,
           "base": {"tok_s_b1": tok_s["base"], "rtf": e2e_s["base"] / audio_s}, "drafts": {}}
    for label, pair in pairs.items():
        st = pair.stats.since(before[label])
        per_token = st.per_token or 0.0
        c = cost_model.cost(variants.dims_of(drafts[label]), variants.spec_of(drafts[label]))
        ratio = c.decode_floor_s(1, bw, tf) / base_step
        predicted, k = cost_model.best_speedup(per_token, ratio)
        out["drafts"][label] = {
            "folder": str(drafts[label]), "shares_encoder": pair.shares_encoder,
            "acceptance": st.acceptance,
            "per_token": per_token, "tokens_per_pass": st.tokens / max(1, st.target_passes),
            "tok_s_b1": tok_s[label], "speedup_b1": tok_s[label] / tok_s["base"],
            "b10": "falls back to base (speculative decoding is per window)",
            "rtf": e2e_s[label] / audio_s, "e2e_speedup": e2e_s["base"] / e2e_s[label],
            "identical": identical[label],
            "cost_model": {"draft_over_target": ratio, "predicted_speedup": predicted, "best_k": k,
                           "per_token_needed_for_target": cost_model.acceptance_needed(SPECULATIVE_TARGET, ratio),
                           "target_speedup": SPECULATIVE_TARGET}}
    return out


def markdown(spec: dict) -> list[str]:
    """The bench.md section."""
    chip = spec["chip"]
    L = [f"## Speculative decoding: base as target, each draft on {spec['clips']} real clips "
         f"({spec['tokens']} tokens, medians of {spec['repeats']} rounds)", "",
         "Acceptance = accepted / proposed; per-token = accepted / checked (each proposal is checked only "
         "while the ones before it were accepted). Batch 10: speculative decoding applies per window, so a "
         "batch of windows decodes with base alone. Identical = every clip's tokens equal base's. "
         f"Cost model ({chip}, bandwidth floor): draft step / base step, the speed-up predicted at the "
         f"measured per-token acceptance (best k), and the per-token acceptance "
         f"{SPECULATIVE_TARGET}x would need.", "",
         "| draft | shares encoder | acceptance | per-token | tokens / target pass | tok/s b1 | × base b1 "
         f"| b10 | e2e RTF | e2e × base | identical | {chip}: draft/base step | {chip}: predicted × "
         f"| per-token for {SPECULATIVE_TARGET}x |",
         "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|",
         f"| (base alone) | | | | 1.00 | {spec['base']['tok_s_b1']:.1f} | 1.00× | base | "
         f"{spec['base']['rtf']:.3f} | 1.00× | | | | |"]
    for label, d in spec["drafts"].items():
        cm = d["cost_model"]
        need = "unreachable" if cm["per_token_needed_for_target"] is None else f"{cm['per_token_needed_for_target']:.2f}"
        acc = "–" if d["acceptance"] is None else f"{100 * d['acceptance']:.1f}%"
        L.append(f"| {label} | {'yes' if d['shares_encoder'] else 'no'} | {acc} | {d['per_token']:.2f} | "
                 f"{d['tokens_per_pass']:.2f} | {d['tok_s_b1']:.1f} | {d['speedup_b1']:.2f}× | base | "
                 f"{d['rtf']:.3f} | {d['e2e_speedup']:.2f}× | {'yes' if d['identical'] else '**NO**'} | "
                 f"{cm['draft_over_target']:.2f} | {cm['predicted_speedup']:.2f}× (k={cm['best_k']}) | {need} |")
    return L + [""]
