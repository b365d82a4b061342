"""One rank of the data-parallel equivalence test (tests/test_distributed.py): distils a tiny
merged student for a few steps on fixed global batches and rank 0 saves its parameters.
Run alone (1 process) or under ``torchrun --nproc_per_node 2`` (gloo on CPU)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_compress_ops import SRC, D, V, tiny_model  # noqa: E402

VOCAB = 51866

from mlx_bald.compress import apply_spec  # noqa: E402
from mlx_bald.compress.train.clip_store import clip_file  # noqa: E402
from mlx_bald.compress.train.data import EpochBatches, collate_fn  # noqa: E402
from mlx_bald.compress.train.distill import DistillConfig, train_decoder  # noqa: E402
from mlx_bald.compress.train.hardware import init_from_env, is_main, main_first, world_size  # noqa: E402
from mlx_bald.spec import CompressionSpec, MergeGroup  # noqa: E402


def main(out: Path, steps: int) -> None:
    init_from_env()
    g = torch.Generator().manual_seed(5)
    # 10 clips of different lengths (padding), 2 prompt tokens each; batches of 5 rows split 3 + 2
    rows = [(f"c{i}", torch.randint(0, V - 4, (3 + (i * 7) % 9,), generator=g).tolist(), 2) for i in range(10)]
    with main_first():  # rank 0 writes the encoder-state cache, rank 1 finds it
        from safetensors.torch import save_file
        (out / "enc").mkdir(parents=True, exist_ok=True)
        for cid, _, _ in rows:
            if not clip_file(out / "enc", cid).is_file():
                save_file({"encoder_hidden_states": torch.randn(SRC, D, generator=g).half()}, str(clip_file(out / "enc", cid)))
    make = collate_fn(out / "enc")

    def epoch(e: int) -> EpochBatches:
        order = list(range(len(rows)))
        random.Random(e).shuffle(order)
        chunks = [order[i:i + 5] for i in range(0, len(order), 5)]
        return EpochBatches(chunks, lambda c: make([rows[i] for i in c]),
                            lambda c: sum(len(rows[i][1]) - rows[i][2] for i in c))

    # the real vocabulary size: batches are padded with Whisper's end-of-text token
    teacher = tiny_model(seed=1, vocab_size=VOCAB)
    spec = CompressionSpec(decoder_merge=[MergeGroup([0, 1], [0.4, 0.6]), MergeGroup([2, 3], [0.5, 0.5])], recipe=["bald"])
    student = apply_spec(tiny_model(seed=1, vocab_size=VOCAB), spec)
    cfg = DistillConfig(lr=3e-3, steps=steps, kd_weight=1.0, feature_weight=0.0, checkpoint_every=2, seed=0)
    losses = train_decoder(student, teacher, epoch, cfg, out / f"ckpt-{world_size()}", progress=False)
    if is_main():
        torch.save({k: v.detach().clone() for k, v in student.state_dict().items()} | {"_loss": torch.tensor(losses["loss"])},
                   out / f"params-{world_size()}.pt")


def encoder_recipe(out: Path) -> None:
    """The AdaPTwin + pruning recipe end to end (twins, bridges, recovery) on a tiny model."""
    from test_recipe_adaptwin import tiny_run

    from mlx_bald.compress.ops.model import load_compressed
    from mlx_bald.compress.recipes.encoder import run_encoder

    from mlx_bald.compress.train.layer_cache import HiddenStates

    init_from_env()
    rows = [0]
    load = HiddenStates.load

    def counting_load(self, clip_ids, *keys):  # how many rows this rank trains and measures on
        rows[0] += len(clip_ids)
        return load(self, clip_ids, *keys)

    HiddenStates.load = counting_load
    base = tiny_model(encoder_layers=4, encoder_ffn_dim=256, decoder_ffn_dim=256)
    run_dir = out / f"run-{world_size()}"
    kw = tiny_run(run_dir, base, prune=1, compression=0.3, epochs=2, bridge_epochs=2, recover_epochs=1)
    kw["states_dir"] = out / "states"  # one hidden-state cache: rank 0 builds it, the other reads it
    folder = run_encoder(kw.pop("o"), run_dir / "student", progress=False, **kw)
    if is_main():
        model, _ = load_compressed(folder)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()} | {"_rows": torch.tensor(rows[0])},
                   out / f"params-{world_size()}.pt")


if __name__ == "__main__":
    if sys.argv[2] == "encoder":
        encoder_recipe(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]), int(sys.argv[2]))
