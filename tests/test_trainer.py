"""The one training loop (compress/train/trainer.py): gradient accumulation, TensorBoard logging,
and that every stage trains through it."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_recipe_adaptwin import clips, featurize  # noqa: E402
from test_compress_ops import tiny_model  # noqa: E402

from mlx_bald.compress.train.layer_cache import HiddenStates, LayerTrainConfig, train_layer  # noqa: E402
from mlx_bald.errors import MlxBaldError  # noqa: E402


@pytest.fixture()
def states(tmp_path):
    base = tiny_model(encoder_layers=2)
    states = HiddenStates(tmp_path / "states")
    train = clips("train", 8)
    states.build(base, ((c.id, featurize(c)) for c in train), progress=False)
    return base, states, [c.id for c in train]


def test_two_accumulated_micro_batches_take_the_step_of_one_double_batch(states):
    base, hs, ids = states
    results = []
    for batch_size, accumulate in ((4, 1), (2, 2)):
        layer = copy.deepcopy(base.model.encoder.layers[1])
        cfg = LayerTrainConfig(lr=1e-3, epochs=2, batch_size=batch_size, accumulate=accumulate, seed=3)
        stats = train_layer(layer, hs, ids, 1, 2, cfg, progress=False)
        assert stats["steps"] == 4
        results.append(layer.state_dict())
    moved = max((results[0][k] - v).abs().max().item() for k, v in base.model.encoder.layers[1].state_dict().items())
    assert moved > 1e-4
    # equal up to float rounding: summing 2 + 2 rows differs from 4 in the last bits, and Adam's
    # normalisation amplifies that on tiny gradients (measured up to 9e-6); a wrong step moves ~1e-3
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, atol=3e-5, rtol=1e-5, msg=k)


def test_log_dir_writes_tensorboard_scalars_or_says_what_is_missing(states, tmp_path):
    base, hs, ids = states
    cfg = LayerTrainConfig(lr=1e-3, epochs=1, batch_size=4, log_dir=str(tmp_path / "tb"))
    layer = copy.deepcopy(base.model.encoder.layers[1])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MlxBaldError, match="pip install tensorboard"):
            train_layer(layer, hs, ids, 1, 2, cfg, progress=False, desc="layer-1")
        return
    train_layer(layer, hs, ids, 1, 2, cfg, progress=False, desc="layer-1")
    assert list((tmp_path / "tb" / "layer-1").glob("events.out.tfevents.*"))


def test_no_stage_keeps_its_own_optimiser_loop():
    """Every stage's optimiser steps go through trainer.train (one loop, one set of features)."""
    from pathlib import Path

    import mlx_bald.compress as pkg

    for path in Path(pkg.__file__).parent.rglob("*.py"):
        text = path.read_text()
        if path.name != "trainer.py":
            assert "torch.optim." not in text and ".backward()" not in text, path.name
