"""Test WER of a bald run's started decoder (``work/start``: spaced layers and local steps, no
end-to-end step), scored as the recipe's final table scores its rows (torch, cached base-encoder
states; greedy, the temperature fallback, looping hypotheses). It answers whether the
end-to-end stage helped the start.

    python -m benchmarks.studies.start_stage_wer --run runs/bald-es-start --set asterisk-es:test
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.start_stage_wer", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="the --out folder of a bald run (holds work/start)")
    p.add_argument("--set", required=True, help="the test set, e.g. fillets-cs:test")
    p.add_argument("--model", default="whisper-base", help="the run's source model (its encoder cache)")
    a = p.parse_args(argv)

    from mlx_bald.compress.ops.model import load_compressed
    from mlx_bald.compress.train.data import ensure_encoder_cache
    from mlx_bald.compress.train.greedy import decoded_wer
    from mlx_bald.data import load_set
    from mlx_bald.torch_ref import load_torch_model

    student, _ = load_compressed(a.run / "work" / "start")
    clips = load_set(a.set)
    cache = ensure_encoder_cache(load_torch_model(a.model), a.model, a.set, clips)
    scores = {k: round(v, 2) for k, v in decoded_wer(student, clips, cache).items()}
    print(json.dumps({"run": str(a.run), "set": a.set, "clips": len(clips), **scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
