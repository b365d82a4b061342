"""Would an untrained cheaper decoder make a speculative draft for base? (issue #16)

Base decodes each clip greedily (no timestamps); each candidate (base's first n decoder layers,
or its decoder pairs merged by a weighted average with alpha) is teacher-forced along base's
path, and the share of positions where its argmax is base's token is printed: roughly the
per-token acceptance it would get as a draft.

    python -m benchmarks.studies.draft_candidates   # LibriVox 5 + asterisk-en:test 20 + fillets-cs:test 15
"""
from __future__ import annotations

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

CANDIDATES = ("first 3 layers", "first 4 layers", "first 5 layers",
              "pairs merged a=0.3", "pairs merged a=0.5", "pairs merged a=0.7")


def candidate(folder, kind: str):
    from mlx_bald.load import load_model

    model = load_model(folder)
    blocks = model.decoder.blocks
    if kind.startswith("first"):
        model.decoder.blocks = blocks[: int(kind.split()[1])]
    else:
        a = float(kind.split("=")[1])
        for i in range(0, len(blocks), 2):
            pa, pb = dict(tree_flatten(blocks[i].parameters())), dict(tree_flatten(blocks[i + 1].parameters()))
            blocks[i].update(tree_unflatten([(k, a * pa[k] + (1 - a) * pb[k]) for k in pa]))
        model.decoder.blocks = blocks[::2]
    return model


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(prog="python -m benchmarks.studies.draft_candidates", description=__doc__.split("\n\n")[0],
                            epilog="No options: base on LibriVox (5 clips), the first 20 of asterisk-en:test "
                                   "and the first 15 of fillets-cs:test.").parse_args(argv)
    from mlx_whisper.decoding import DecodingOptions, DecodingTask

    from benchmarks.engines import window_mel

    from mlx_bald.data import load_set
    from mlx_bald.hub import resolve_model
    from mlx_bald.load import load_model

    folder = resolve_model("whisper-base", "mlx")
    base = load_model(folder)
    drafts = {k: candidate(folder, k) for k in CANDIDATES}
    clips = load_set("librivox") + load_set("asterisk-en:test")[:20] + load_set("fillets-cs:test")[:15]
    hits, n = dict.fromkeys(drafts, 0), 0
    for clip in clips:
        mel = window_mel(clip.audio, base.dims.n_mels)
        options = DecodingOptions(language=clip.language, temperature=0.0, fp16=False, without_timestamps=True)
        result = base.decode(mel, options)
        task = DecodingTask(base, options)
        initial = list(task.initial_tokens)
        path = initial + result.tokens + [task.tokenizer.eot]
        features = base.embed_audio(mel[None])
        for k, d in drafts.items():
            logits = d.decoder(mx.array([path[:-1]]), features)[0][0, len(initial) - 1:]
            hits[k] += int((np.array(mx.argmax(logits, axis=-1)) == np.array(path[len(initial):])).sum())
        n += len(path) - len(initial)
    print(f"{len(clips)} clips, {n} positions")
    for k, h in hits.items():
        print(f"{k}: {100 * h / n:.1f}% of base's tokens")


if __name__ == "__main__":
    main()
