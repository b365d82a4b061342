"""Data-aware (whitened, probability-weighted) initialisation of the factored token
embedding (torch; seconds)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import D, V, tiny_model, tokens  # noqa: E402
from test_whiten import correlated  # noqa: E402

from mlx_bald.compress.ops.embedding import (EmbeddingStats, FactoredEmbedding, collect_embedding_stats,  # noqa: E402
                                         factorize_embedding)
from mlx_bald.compress.ops.whiten import collect_input_moments  # noqa: E402


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = tokens(2, 6, seed + i)
        labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
        out.append({"encoder_hidden_states": torch.randn(2, 8, D, generator=g), "decoder_input_ids": ids,
                    "labels": labels})
    return out


def kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    lp, lq = ref.log_softmax(-1), out.log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_stats_are_the_heads_input_moment_and_token_weights():
    model, data = tiny_model(), batches(3, 0)
    stats = collect_embedding_stats(model, data)
    run = lambda: [model(encoder_outputs=(b["encoder_hidden_states"],), decoder_input_ids=b["decoder_input_ids"])  # noqa: E731
                   for b in data]
    ref = collect_input_moments({"head": model.proj_out}, run)["head"][:-1, :-1]
    torch.testing.assert_close(stats.hidden_moment, ref)
    assert stats.row_weight.shape == (V,) and bool((stats.row_weight >= 1.0 / V - 1e-12).all())
    torch.testing.assert_close(stats.row_weight.sum(), torch.tensor(3.0, dtype=torch.float64))  # prob + freq + floor
    fed = {int(t) for b in data for t in b["decoder_input_ids"][b["labels"] != -100]}
    unfed = next(i for i in range(V) if i not in fed)
    assert all(stats.row_weight[t] > stats.row_weight[unfed] for t in fed)


def test_full_rank_data_aware_factors_reproduce_the_logits():
    model, ref = tiny_model(), tiny_model()
    stats = collect_embedding_stats(model, batches(2, 1))
    emb = factorize_embedding(model, D, stats)
    b = batches(1, 7)[0]
    kw = dict(encoder_outputs=(b["encoder_hidden_states"],), decoder_input_ids=b["decoder_input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**kw).logits, ref(**kw).logits, atol=2e-4, rtol=1e-4)
    assert emb.weight_a.shape == (V, D)


def test_data_aware_low_rank_beats_plain_svd_where_the_data_is():
    """Hidden states in a few mixed directions and a few tokens carrying the probability:
    the weighted, whitened subspace keeps the logits that matter, the plain SVD does not."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(V, D, generator=g)
    calib, test = correlated(512, D, 4), correlated(256, D, 5)
    ref = test @ weight.T * 0.2
    likely = ref.softmax(-1).mean(0).double()
    stats = EmbeddingStats((calib.T @ calib).double() / len(calib), likely + 1.0 / V)
    with torch.no_grad():
        plain = FactoredEmbedding.from_weight(weight, 12)
        aware = FactoredEmbedding.from_weight(weight, 12, stats=stats)
        k_plain, k_aware = kl(ref, plain.logits(test) * 0.2), kl(ref, aware.logits(test) * 0.2)
    assert k_aware < 0.5 * k_plain, (k_aware, k_plain)
    assert float(aware.weight_a.norm()) == pytest.approx(float(aware.weight_b.norm()), rel=1e-3)  # balanced factors


def test_bald_rejects_an_unknown_embedding_init(tmp_path):
    from mlx_bald.compress.recipes.bald import BaldOptions, run_bald
    from mlx_bald.errors import MlxBaldError

    with pytest.raises(MlxBaldError, match="embed_init"):
        run_bald(BaldOptions(out=tmp_path / "o", embed_init="random"))
    assert not (tmp_path / "o").exists()
