"""How the factored embedding starts, before any end-to-end step: dev cross-entropy on the
references and teacher-forced agreement with the dense model's argmax, for each of the bald
recipe's ``--embed-init`` choices (svd, whiten, fit) of one dense model (base, or a run's
merged student), calibrated on the first batches of a training set as the recipe does.

    python -m benchmarks.studies.embedding_init --model runs/bald-es-start/work/merged \\
        --train asterisk-es:train --dev asterisk-es:dev
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from itertools import islice


def _scores(model, dense_model, dev, cache, max_tokens: int) -> dict:
    """Dev CE of ``model`` on the references and its argmax agreement with ``dense_model``."""
    import torch
    from torch.nn import functional as F

    from mlx_bald.compress.train.data import batches_from_cache

    total = agree = count = 0
    with torch.no_grad():
        for b in batches_from_cache(dev, cache, 16, 0, vocab=model.config.vocab_size, max_tokens=max_tokens)(0):
            kw = {"encoder_outputs": (b["encoder_hidden_states"].float(),), "decoder_input_ids": b["decoder_input_ids"],
                  "use_cache": False}
            mask = b["labels"] != -100
            logits, ref = model(**kw).logits[mask], dense_model(**kw).logits[mask]
            total += F.cross_entropy(logits, b["labels"][mask], reduction="sum").item()
            agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
            count += int(mask.sum())
    return {"dev_ce": round(total / count, 4), "agreement": round(100 * agree / count, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.embedding_init", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="whisper-base", help="a dense-embedding model: a name, or a compressed folder")
    p.add_argument("--encoder-model", default="whisper-base", help="whose encoder cache the sets use")
    p.add_argument("--train", required=True, help="calibration set (its first batches, as the recipe)")
    p.add_argument("--dev", required=True, help="scored set")
    p.add_argument("--rank", type=int, default=96)
    p.add_argument("--inits", default="svd,whiten,fit")
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--lookup-weight", type=float, default=1.0, help="fit: weight of the lookups' error beside the KL")
    p.add_argument("--ridge", type=float, default=None, help="whiten/fit: the second moment's ridge (default: the recipe's)")
    p.add_argument("--calib-batches", type=int, default=20)
    p.add_argument("--max-train-clips", type=int, default=480)
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args(argv)

    from pathlib import Path

    from mlx_bald.compress.ops.embedding import collect_embedding_stats, factorize_embedding
    from mlx_bald.compress.ops.model import load_compressed
    from mlx_bald.compress.train.data import batches_from_cache, ensure_encoder_cache, subset
    from mlx_bald.compress.train.embedding_fit import collect_head_data, fit_factored_embedding
    from mlx_bald.data import load_set
    from mlx_bald.torch_ref import load_torch_model

    base = load_torch_model(a.encoder_model)
    dense = load_compressed(Path(a.model))[0] if Path(a.model).is_dir() else copy.deepcopy(load_torch_model(a.model))
    dense.eval()
    train = subset(load_set(a.train), a.max_train_clips, 0)
    dev = load_set(a.dev)
    caches = {s: ensure_encoder_cache(base, a.encoder_model, spec, clips)
              for s, spec, clips in (("train", a.train, train), ("dev", a.dev, dev))}
    calib = list(islice(batches_from_cache(train, caches["train"], 8, 3, vocab=dense.config.vocab_size,
                                           max_tokens=a.max_tokens)(0), a.calib_batches))
    stats = collect_embedding_stats(dense, calib)
    if a.ridge is not None:
        stats.ridge = a.ridge
    head = collect_head_data(dense, calib)
    rows = {"dense": _scores(dense, dense, dev, caches["dev"], a.max_tokens)}
    for init in a.inits.split(","):
        t0 = time.time()
        student = copy.deepcopy(dense)
        weight = student.model.decoder.embed_tokens.weight.detach().clone()
        emb = factorize_embedding(student, a.rank, None if init == "svd" else stats)
        fit = fit_factored_embedding(emb, weight, head, a.fit_steps, lookup_weight=a.lookup_weight) if init == "fit" else {}
        rows[init] = _scores(student, dense, dev, caches["dev"], a.max_tokens) | fit | {
            "seconds": round(time.time() - t0)}
        print(f"{init}: {rows[init]}", flush=True)
    print(json.dumps({"model": a.model, "train": a.train, "dev": a.dev, "rank": a.rank, "ridge": stats.ridge,
                      "calib_batches": a.calib_batches, "lookup_weight": a.lookup_weight, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
