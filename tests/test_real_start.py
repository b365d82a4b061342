"""The start of a 3-layer whisper-base decoder on real weights and real speech: spaced layers with
the closed-form patch (no gradient step; the recipes' default adds local steps, too slow here),
fitted on a few Asterisk English train prompts (base's own greedy tokens), reproduce most of
base's greedy tokens teacher-forced on held-out prompts, where the plain pair average reproduces
none."""
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")


def test_patched_spaced_start_is_near_base_where_the_average_is_not():
    import copy
    from dataclasses import replace

    from benchmarks.recovery import _labelled
    from mlx_bald.compress.recipes.bald import PSEUDO_LABEL_TOKENS
    from mlx_bald.compress.recipes.start import StartConfig, build_start
    from mlx_bald.compress.train.data import tokenizer
    from mlx_bald.compress.train.decoder_states import teacher_forced_scores, token_batches
    from mlx_bald.torch_ref import load_torch_model

    base = copy.deepcopy(load_torch_model("whisper-base")).eval()
    vocab = base.config.vocab_size
    eot = tokenizer(vocab).eot
    fit = token_batches(*_labelled(base, "whisper-base", "asterisk-en:train", 48), vocab, PSEUDO_LABEL_TOKENS)
    held_out = token_batches(*_labelled(base, "whisper-base", "asterisk-en:test", None), vocab, PSEUDO_LABEL_TOKENS)[:3]
    assert teacher_forced_scores(base, held_out, eot)["agreement"] > 97  # base on its own greedy tokens

    patched = replace(StartConfig(), patch="refit", local_steps=0)
    started, spec, report = build_start(base, 3, fit, patched, progress=False)
    assert [g.layers[-1] for g in spec.decoder_merge] == [1, 4, 5] and len(report["patch"]) == 3
    averaged, _, _ = build_start(base, 3, fit, StartConfig(layers="pairs", patch="none", local_steps=0),
                                 progress=False)
    near = teacher_forced_scores(started, held_out, eot)
    far = teacher_forced_scores(averaged, held_out, eot)
    assert far["agreement"] < 10 and near["agreement"] > 60, (near, far)
    assert near["ce"] < far["ce"] / 4
