"""Data-whitened (SVD-LLM) initialisation of twins and low-rank FFNs (torch; seconds)."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import D, tiny_model, features  # noqa: E402

from mlx_bald.compress import apply_spec, compress_attention, lowrank_from_linear  # noqa: E402
from mlx_bald.compress.ops.whiten import collect_input_moments, whitener  # noqa: E402
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank  # noqa: E402


def correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    """Inputs living mostly in a few mixed (not axis-aligned) directions, with an offset: the
    case where a diagonal RMS scaling cannot see what the data uses."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99))
    scale = torch.logspace(1, -2, dim)
    return (torch.randn(n, dim, generator=g) * scale) @ mix / dim**0.5 + 0.5


def test_moments_are_the_augmented_second_moment_from_args_and_kwargs():
    lin = torch.nn.Linear(D, 8)
    attn = tiny_model().model.encoder.layers[0].self_attn
    x = correlated(200, D, 0).reshape(4, 50, D)
    m = collect_input_moments({"lin": lin, "attn": attn}, lambda: (lin(x), attn(hidden_states=x)))
    xa = torch.cat([x.reshape(-1, D), torch.ones(200, 1)], 1).double()
    for name in ("lin", "attn"):
        torch.testing.assert_close(m[name], xa.T @ xa / 200)
    chol = whitener(m["lin"], ridge=0.0)
    torch.testing.assert_close(chol @ chol.T, m["lin"])


def test_full_rank_whitened_factors_are_exact():
    layer = tiny_model().model.encoder.layers[1]
    x = correlated(48, D, 1).reshape(3, 16, D)
    m = collect_input_moments({"attn": layer.self_attn, "fc1": layer.fc1}, lambda: (layer.self_attn(x), layer.fc1(x)))
    att = compress_attention(layer.self_attn, 16, 16, moment=m["attn"])
    fc1 = lowrank_from_linear(layer.fc1, D, moment=m["fc1"])
    with torch.no_grad():
        torch.testing.assert_close(att(x)[0], layer.self_attn(x)[0], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(fc1(x), layer.fc1(x), atol=5e-5, rtol=1e-4)


def test_whitened_low_rank_beats_plain_and_asvd_on_held_out_data():
    layer = tiny_model().model.encoder.layers[0]
    calib, test = correlated(512, D, 2).reshape(8, 64, D), correlated(256, D, 3).reshape(4, 64, D)
    mods = {"attn": layer.self_attn, "fc1": layer.fc1}
    m = collect_input_moments(mods, lambda: (layer.self_attn(calib), layer.fc1(calib)))
    rms = m["fc1"][:D, :D].diagonal().sqrt().float()
    with torch.no_grad():
        ref_fc, ref_att = layer.fc1(test), layer.self_attn(test)[0]
        err = {k: float((lowrank_from_linear(layer.fc1, 16, **kw)(test) - ref_fc).norm())
               for k, kw in (("plain", {}), ("asvd", {"act_rms": rms}), ("whiten", {"moment": m["fc1"]}))}
        assert err["whiten"] < 0.7 * min(err["plain"], err["asvd"]), err
        plain = float((compress_attention(layer.self_attn, 6, 6)(test)[0] - ref_att).norm())
        white = float((compress_attention(layer.self_attn, 6, 6, moment=m["attn"])(test)[0] - ref_att).norm())
    assert white < 0.7 * plain, (white, plain)


def test_apply_spec_whiten_uses_calibration_and_rejects_unknown_init():
    base = tiny_model(encoder_layers=2)
    spec = CompressionSpec(attention={"encoder.blocks.0.attn": AttentionRank(8, 8, 0, 0)},
                           ffn={"encoder.blocks.0.mlp": FFNRank(32, 32, 0)})
    feats = features(4, seed=5)
    calibrate = lambda m: m.model.encoder(feats)  # noqa: E731
    with torch.no_grad():
        ref = base.model.encoder(feats).last_hidden_state
        outs = {init: apply_spec(copy.deepcopy(base), spec, calibrate=calibrate, init=init).model.encoder(feats)
                .last_hidden_state for init in ("asvd", "whiten")}
        plain = apply_spec(copy.deepcopy(base), spec).model.encoder(feats).last_hidden_state
    errs = {k: float((v - ref).norm()) for k, v in outs.items()}
    assert errs["whiten"] < errs["asvd"] and errs["whiten"] < float((plain - ref).norm()), errs
    with pytest.raises(ValueError, match="init"):
        apply_spec(copy.deepcopy(base), spec, calibrate=calibrate, init="svd")
