"""Dev-checked training segments (compress/train/dev_checks.py) and the local fit of the
factored embedding (compress/train/embedding_fit.py)."""
import pytest
import torch

from mlx_bald.compress.train.dev_checks import DevChecks, check_steps, train_checked


def _run(curve, total=600, history=None, checks=DevChecks(evals=6, patience=2)):
    """A stage whose dev CE after step s is curve[s]; returns (best, steps trained to, saves)."""
    trained, saves = [], []
    state = {"step": history[-1]["step"] if history else 0}
    history = history or [{"step": 0, "dev_ce": curve[0]}]

    def train_to(step):
        trained.append(step)
        state["step"] = step

    best = train_checked(train_to, lambda: {"dev_ce": curve[state["step"]]}, lambda: saves.append(state["step"]), total,
                         history, lambda h: None, checks, log=lambda m: None)
    return best, trained, saves, history


def test_check_steps_end_at_the_total():
    assert check_steps(700, 6) == [116, 232, 348, 464, 580, 696, 700]
    assert check_steps(3, 6) == [1, 2, 3]


def test_a_stage_that_turns_stops_after_patience_and_keeps_its_best():
    curve = {0: 2.0, 100: 1.5, 200: 1.2, 300: 1.3, 400: 1.25, 500: 1.0, 600: 0.9}
    best, trained, saves, _ = _run(curve)
    assert best == {"step": 200, "dev_ce": 1.2}
    assert trained == [100, 200, 300, 400]  # two checks without a better one, then no more training
    assert saves == [100, 200]


def test_a_stage_that_only_hurts_hands_on_its_start():
    curve = {0: 1.0, 100: 1.1, 200: 1.2, 300: 0.5}
    best, trained, saves, _ = _run(curve, total=300, checks=DevChecks(evals=3, patience=2))
    assert best["step"] == 0 and trained == [100, 200] and saves == []


def test_a_resumed_stage_skips_the_steps_it_checked():
    curve = {0: 2.0, 100: 1.5, 200: 1.4, 300: 1.3}
    best, trained, _, history = _run(curve, total=300, history=[{"step": 0, "dev_ce": 2.0}, {"step": 100, "dev_ce": 1.5}],
                                     checks=DevChecks(evals=3, patience=2))
    assert trained == [200, 300] and best["step"] == 300 and [h["step"] for h in history] == [0, 100, 200, 300]


def test_checks_ranked_by_wer_break_ties_by_cross_entropy():
    from mlx_bald.compress.train.dev_checks import best_check

    history = [{"step": 0, "dev_ce": 0.8, "dev_wer": 20.0}, {"step": 100, "dev_ce": 1.0, "dev_wer": 15.0},
               {"step": 200, "dev_ce": 0.9, "dev_wer": 15.0}]
    assert best_check(history)["step"] == 0  # by cross-entropy
    assert best_check(history, "dev_wer")["step"] == 200  # by WER, then cross-entropy


def test_a_history_without_its_start_is_refused():
    with pytest.raises(ValueError, match="step 0"):
        train_checked(lambda s: None, lambda: {"dev_ce": 1.0}, lambda: None, 10, [], lambda h: None)


def test_the_local_fit_brings_the_factored_head_closer_to_the_dense_one():
    from mlx_bald.compress.ops.embedding import FactoredEmbedding
    from mlx_bald.compress.train.embedding_fit import HeadData, fit_factored_embedding, head_fit_losses

    torch.manual_seed(0)
    dense = torch.randn(300, 32)
    hidden = torch.randn(2000, 32) * torch.linspace(3, 0.1, 32)  # anisotropic head inputs, as in a decoder
    ids = torch.randint(0, 40, (500,))  # a few tokens are looked up
    train, held = HeadData(hidden[:1500], ids), hidden[1500:]
    emb = FactoredEmbedding.from_weight(dense, 8)
    before = {k: v.item() for k, v in head_fit_losses(emb, dense, held, ids).items()}
    report = fit_factored_embedding(emb, dense, train, steps=300, lr=3e-3, progress=False)
    after = {k: v.item() for k, v in head_fit_losses(emb, dense, held, ids).items()}
    assert after["kl"] < 0.8 * before["kl"]  # on held-out head inputs
    assert after["kl"] + after["lookup"] < before["kl"] + before["lookup"]  # the objective; lookups may trade
    assert report["kl_after"] < report["kl_before"]
