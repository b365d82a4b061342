"""Why dev and test WER disagree on a Fish Fillets language (issue #20): one model, both splits.

For each split: clips, levels, seconds, the speakers (the dialog's font: small fish, big fish,
others), corpus WER, WER without the hypotheses that loop (compression ratio > 2.4, or more
than 3x the reference's words), the share of all word errors those loops cause, per-level WER,
and a 90% interval of the split's WER from resampling its levels (the unit the split is made
of), and the same on the first 48 dev clips (the recipe's old dev size). Greedy decoding with
the MLX runtime (``--decoder mlx``) or the compress recipe's own scorer (``--decoder recipe``:
torch greedy on cached encoder states, no timestamps, 120 tokens); Whisper's basic normaliser.

    python -m benchmarks.studies.dev_test_study --lang nl [--decoder recipe] [--model whisper-base]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
_FONT = re.compile(r'dialogId\(\s*"((?:[^"\\]|\\.)*)"\s*,\s*"((?:[^"\\]|\\.)*)"')


def speakers(lang: str) -> dict[str, str]:
    """``level/clip_id -> font`` (the game draws each character's lines in its own font)."""
    from mlx_bald.data.fillets import fillets_dir

    out = {}
    for script in (fillets_dir(lang) / "script").glob(f"*/*dialogs_{lang}.lua"):
        for clip_id, font in _FONT.findall(script.read_text(encoding="utf-8", errors="replace")):
            out[f"{script.parent.name}/{clip_id}"] = font
    return out


def _errors(ref: str, hyp: str, norm) -> tuple[int, int]:
    import jiwer

    r, h = norm(ref), norm(hyp)
    if not r.strip():
        return 0, 0
    o = jiwer.process_words(r, h)
    return o.substitutions + o.deletions + o.insertions, len(r.split())


def loops(ref: str, hyp: str) -> bool:
    from mlx_whisper.decoding import compression_ratio

    return bool(hyp) and (compression_ratio(hyp) > 2.4 or len(hyp.split()) > 3 * max(1, len(ref.split())))


def mlx_rows(model: str, lang: str, split: str) -> tuple[list[dict], float]:
    """(id, reference, hypothesis) per clip with `mlx-bald eval`'s greedy decoder; audio seconds."""
    from mlx_bald.evaluate import evaluate

    r = evaluate(model, f"fillets-{lang}:{split}", progress=sys.stderr.isatty())
    return r.rows, r.audio_seconds


def recipe_rows(model: str, lang: str, split: str) -> tuple[list[dict], float]:
    """The same with the compress recipe's own dev/test decoder: torch greedy on cached base
    encoder states, no timestamps, at most 120 tokens (mlx_bald.compress.train.greedy)."""
    import torch

    from mlx_bald.compress.train.data import ensure_encoder_cache
    from mlx_bald.compress.train.distill import load_cached_encoder_output
    from mlx_bald.compress.train.greedy import greedy_transcribe
    from mlx_bald.data import load_set
    from mlx_bald.torch_ref import load_torch_model

    m = load_torch_model(model)
    clips = load_set(f"fillets-{lang}:{split}")
    cache = ensure_encoder_cache(m, model, f"fillets-{lang}:{split}", clips)
    hyps: list[str] = []
    with torch.no_grad():
        for start in range(0, len(clips), 8):
            chunk = clips[start: start + 8]
            states = torch.stack([load_cached_encoder_output(cache, c.id) for c in chunk])
            hyps += greedy_transcribe(m, states, lang, 120)
    rows = [{"id": c.id, "reference": c.text, "hypothesis": h} for c, h in zip(clips, hyps)]
    return rows, round(sum(c.seconds for c in clips), 2)


def study_split(model: str, lang: str, split: str, fonts: dict[str, str], rng: np.random.Generator,
                decoder: str = "mlx", first: int = 48) -> dict:
    from types import SimpleNamespace

    from mlx_bald.evaluate import corpus_wer, normalizer_for

    rows, seconds = (mlx_rows if decoder == "mlx" else recipe_rows)(model, lang, split)
    name, norm = normalizer_for(lang)
    r = SimpleNamespace(rows=rows, n_clips=len(rows), audio_seconds=seconds, normalizer=name)
    per_level: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors = words = loop_errors = loop_clips = 0
    for row in r.rows:
        e, n = _errors(row["reference"], row["hypothesis"], norm)
        level = row["id"].split("/")[0]
        per_level[level][0] += e
        per_level[level][1] += n
        errors, words = errors + e, words + n
        if loops(row["reference"], row["hypothesis"]):
            loop_errors, loop_clips = loop_errors + e, loop_clips + 1
    levels = sorted(per_level)
    boot = []
    for _ in range(2000):  # resample levels with replacement
        pick = rng.choice(len(levels), len(levels))
        e = sum(per_level[levels[i]][0] for i in pick)
        n = sum(per_level[levels[i]][1] for i in pick)
        boot.append(100 * e / max(n, 1))
    return {"clips": r.n_clips, "levels": len(levels), "seconds": r.audio_seconds,
            "speakers": dict(Counter(fonts.get(row["id"], "?") for row in r.rows).most_common()),
            "wer": round(100 * errors / words, 2),
            "wer_without_loops": round(100 * (errors - loop_errors) / words, 2),
            "looping_clips": loop_clips, "share_of_errors_from_loops": round(loop_errors / max(errors, 1), 3),
            "wer_90pct_interval_by_levels": [round(float(np.percentile(boot, q)), 1) for q in (5, 95)],
            "per_level_wer": {lv: round(100 * e / max(n, 1), 1) for lv, (e, n) in sorted(per_level.items())},
            f"first_{first}_clips": {  # the recipe's old default dev size
                "wer": round(corpus_wer([x["reference"] for x in rows[:first]], [x["hypothesis"] for x in rows[:first]], lang)[0], 2),
                "looping_clips": sum(loops(x["reference"], x["hypothesis"]) for x in rows[:first]),
                "levels": sorted({x["id"].split("/")[0] for x in rows[:first]})},
            "decoder": decoder, "normaliser": r.normalizer}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", default="nl")
    p.add_argument("--model", default="whisper-base")
    p.add_argument("--decoder", choices=["mlx", "recipe"], default="mlx",
                   help="mlx: `mlx-bald eval`'s greedy; recipe: the compress recipe's dev/test decoder (torch)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    fonts = speakers(args.lang)
    rng = np.random.default_rng(0)
    out = {"model": args.model, "lang": args.lang, "decoder": args.decoder,
           "splits": {s: study_split(args.model, args.lang, s, fonts, rng, args.decoder) for s in ("dev", "test")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"dev_test_study_{args.lang}_{args.decoder}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
