"""Compression operators on a tiny random Whisper (torch; seconds)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

from mlx_bald.compress import (FactoredEmbedding, LowRankLinear, LowRankWhisperAttention,  # noqa: E402
                               choose_layers_to_prune, choose_rank, collect_input_rms, compress_attention,
                               embedding_distill_loss, factorize_embedding, feature_distill_loss,
                               lowrank_from_linear, merge_decoder, merge_layers, prune_encoder,
                               remap_alignment_heads, score_encoder_layers, split_rank)
from mlx_bald.spec import MergeGroup  # noqa: E402

D, H, V, N_MELS, SRC = 64, 4, 100, 16, 8


def tiny_config(**kw) -> WhisperConfig:
    base = dict(d_model=D, encoder_layers=2, decoder_layers=4, encoder_attention_heads=H,
                decoder_attention_heads=H, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=V,
                num_mel_bins=N_MELS, max_source_positions=SRC, max_target_positions=32,
                pad_token_id=99, bos_token_id=98, eos_token_id=99, decoder_start_token_id=97,
                suppress_tokens=[], begin_suppress_tokens=[])
    base.update(kw)
    return WhisperConfig(**base)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random at a 1/sqrt(fan_in) scale and every bias non-zero, so exactness
    tests exercise the bias folding and outputs are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = p.shape[1] * (p.shape[2] if p.dim() == 3 else 1)
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5 if "embed" not in name else 1.0))
        elif "layer_norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def tiny_model(seed: int = 0, **kw) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_config(**kw))
    model.generation_config.alignment_heads = [[2, 0], [3, 1], [3, 2]]
    return randomize(model, seed).eval()


def features(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, N_MELS, 2 * SRC, generator=torch.Generator().manual_seed(seed))


def tokens(batch: int = 2, length: int = 7, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, V - 4, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- product-twin attention -------------------------------------------------------------
def test_attention_biases_are_nonzero():
    attn = tiny_model().model.decoder.layers[0].self_attn
    assert attn.q_proj.bias.abs().min() > 0 and attn.v_proj.bias.abs().min() > 0
    assert attn.out_proj.bias.abs().min() > 0 and attn.k_proj.bias is None


@pytest.mark.parametrize("where", ["encoder", "decoder_self", "decoder_cross"])
def test_full_rank_twin_attention_is_exact(where):
    model = tiny_model()
    x = torch.randn(2, 6, D)
    enc = torch.randn(2, SRC, D)
    if where == "encoder":
        attn, kw = model.model.encoder.layers[1].self_attn, {}
    elif where == "decoder_self":
        attn, kw = model.model.decoder.layers[2].self_attn, {}
    else:
        attn, kw = model.model.decoder.layers[2].encoder_attn, {"key_value_states": enc}
    new = compress_attention(attn, 16, 16)
    assert isinstance(new, LowRankWhisperAttention) and new.v_proj.bias is None and new.scaling == 1.0
    with torch.no_grad():
        ref, out = attn(x, **kw)[0], new(x, **kw)[0]
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_decoder_self_attention_is_causal_after_compression():
    attn = compress_attention(tiny_model().model.decoder.layers[0].self_attn, 16, 16)
    x = torch.randn(1, 5, D)
    y = torch.cat([x, torch.randn(1, 3, D)], 1)  # appending future frames must not change the past
    with torch.no_grad():
        torch.testing.assert_close(attn(y)[0][:, :5], attn(x)[0], atol=1e-5, rtol=1e-5)


def test_low_rank_twin_shapes_and_error_decrease_with_rank():
    attn = tiny_model().model.encoder.layers[0].self_attn
    x = torch.randn(2, 8, D)
    with torch.no_grad():
        ref = attn(x)[0]
        errs = []
        for r in (4, 8, 12, 16):
            new = compress_attention(attn, r, r)
            assert new.q_proj.weight.shape == (H * r, D) and new.q_proj.bias.shape == (H * r,)
            assert new.k_proj.weight.shape == (H * r, D) and new.v_proj.weight.shape == (H * r, D)
            assert new.out_proj.weight.shape == (D, H * r)
            errs.append(float((new(x)[0] - ref).norm()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3 < errs[0]


def test_twin_lora_starts_neutral_and_bakes_exactly():
    attn = tiny_model().model.encoder.layers[0].self_attn
    x = torch.randn(2, 8, D)
    plain = compress_attention(attn, 8, 6)
    lora = compress_attention(attn, 10, 8, lora_rank=2, generator=torch.Generator().manual_seed(0))
    assert lora.q_lora.weight.abs().max() > 0 and lora.k_lora.weight.abs().max() == 0
    with torch.no_grad():
        torch.testing.assert_close(lora(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)
        for p in (lora.k_lora.weight, lora.o_lora.weight, lora.q_lora.bias):  # as if trained
            p.normal_(0, 0.1)
        before = lora(x)[0]
        lora.bake_lora()
        after = lora(x)[0]
    assert lora.q_lora is None and lora.q_proj.weight.shape == (H * 10, D)
    assert lora.v_proj.weight.shape == (H * 8, D) and lora.out_proj.weight.shape == (D, H * 8)
    assert (before - plain(x)[0]).abs().max() > 1e-3
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_split_rank_follows_paper_ratios():
    assert split_rank(40) == (32, 8)
    assert split_rank(180, (9, 1)) == (162, 18)


# ---- low-rank FFN -----------------------------------------------------------------------
def test_full_rank_ffn_is_dense_and_asvd_too():
    fc1 = tiny_model().model.encoder.layers[0].fc1
    x = torch.randn(3, 5, D)
    rms = x.reshape(-1, D).pow(2).mean(0).sqrt() * torch.linspace(0.1, 3, D)
    for act in (None, rms):
        low = lowrank_from_linear(fc1, 64, act_rms=act)
        assert isinstance(low, LowRankLinear) and low.rank == 64
        assert low.down.weight.shape == (64, D) and low.down.bias is None and low.up.weight.shape == (128, 64)
        with torch.no_grad():
            torch.testing.assert_close(low(x), fc1(x), atol=1e-5, rtol=1e-5)


def test_ffn_lora_neutral_then_bakes():
    fc2 = tiny_model().model.encoder.layers[0].fc2
    x = torch.randn(4, 128)
    plain = lowrank_from_linear(fc2, 18)
    low = lowrank_from_linear(fc2, 20, lora=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(low(x), plain(x), atol=1e-5, rtol=1e-5)
        low.lora_up.weight.normal_()
        before = low(x)
        low.bake_lora()
        assert low.lora_down is None and low.down.weight.shape == (20, 128) and low.up.weight.shape == (D, 20)
        torch.testing.assert_close(low(x), before, atol=1e-5, rtol=1e-5)


def test_rank_rule_multiples_of_16_and_dense_when_no_saving():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 10, generator=g) @ torch.randn(10, 256, generator=g) + 1e-3 * torch.randn(256, 256, generator=g)
    assert choose_rank(w, energy=0.99) == 16
    r = choose_rank(torch.randn(256, 256, generator=g), energy=0.5)
    assert r is not None and r % 16 == 0 and r * 512 < 256 * 256
    assert choose_rank(torch.randn(128, 64, generator=g), energy=1.0) is None  # 64*(192) >= 128*64


def test_activation_aware_svd_beats_plain_svd_on_its_activations():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 64, generator=g))
    x = torch.randn(512, 64, generator=g) * torch.logspace(-2, 1, 64)  # a few input dims dominate
    rms = collect_input_rms({"lin": lin}, lambda: lin(x))["lin"]
    torch.testing.assert_close(rms, x.pow(2).mean(0).sqrt(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        ref = lin(x)
        plain = (lowrank_from_linear(lin, 16)(x) - ref).norm()
        aware = (lowrank_from_linear(lin, 16, act_rms=rms)(x) - ref).norm()
    assert aware < 0.5 * plain


# ---- factored embedding -----------------------------------------------------------------
def test_full_rank_factored_embedding_reproduces_logits():
    model, ref_model = tiny_model(), tiny_model()
    emb = factorize_embedding(model, D)
    assert isinstance(model.model.decoder.embed_tokens, FactoredEmbedding)
    assert not list(model.proj_out.parameters()) and "model.decoder.embed_tokens.weight" not in model.state_dict()
    f, t = features(), tokens()
    with torch.no_grad():
        ref = ref_model(input_features=f, decoder_input_ids=t).logits
        out = model(input_features=f, decoder_input_ids=t).logits
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert emb.weight_a.shape == (V, D)


def test_low_rank_embedding_shapes_and_tied_head():
    model = tiny_model()
    emb = factorize_embedding(model, 16)
    assert emb.weight_a.shape == (V, 16) and emb.weight_b.shape == (16, D)
    names = {n for n, _ in model.named_parameters()}
    assert {"model.decoder.embed_tokens.weight_a", "model.decoder.embed_tokens.weight_b"} <= names
    assert not any(n.startswith("proj_out") for n in model.state_dict())
    h = torch.randn(2, 3, D)
    with torch.no_grad():
        torch.testing.assert_close(model.proj_out(h), h @ emb.dense_weight().T, atol=1e-4, rtol=1e-4)
        assert model(input_features=features(), decoder_input_ids=tokens()).logits.shape == (2, 7, V)


def test_embedding_feature_loss_minimal_at_match_and_trainable():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(V, 8, generator=g) @ torch.randn(8, D, generator=g) / 8**0.5  # a rank-8 teacher
    same = feature_distill_loss(w, w)
    assert abs(same.item() - float(-torch.nn.functional.logsigmoid(torch.tensor(1.0)))) < 1e-5
    torch.manual_seed(0)
    emb = FactoredEmbedding(V, 8, D)  # random start: the loss must pull it to the teacher
    opt = torch.optim.Adam(emb.parameters(), lr=3e-2)
    h = torch.randn(4, 5, D, generator=g)
    first = embedding_distill_loss(emb, w, hidden=h).item()
    for _ in range(60):
        loss = embedding_distill_loss(emb, w, hidden=h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


# ---- merging ----------------------------------------------------------------------------
def test_merging_identical_layers_returns_that_layer():
    layer = tiny_model().model.decoder.layers[1]
    merged = merge_layers([layer, layer], [0.3, 0.7])
    x, enc = torch.randn(2, 5, D), torch.randn(2, SRC, D)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, encoder_hidden_states=enc, use_cache=False),
                                   layer(x, encoder_hidden_states=enc, use_cache=False), atol=1e-6, rtol=1e-6)


def test_weighted_average_uses_each_weight():
    layers = tiny_model().model.decoder.layers
    merged = merge_layers([layers[0], layers[1]], [1.0, 3.0])
    for name, p in merged.named_parameters():
        a, b = layers[0].get_parameter(name), layers[1].get_parameter(name)
        torch.testing.assert_close(p, (a + 3 * b) / 4)


def test_merge_decoder_renumbers_and_remaps_alignment_heads():
    model = tiny_model()
    groups = [MergeGroup([0, 1], [0.6, 0.4]), MergeGroup([2], [1.0]), MergeGroup([3], [1.0])]
    merge_decoder(model, groups)
    assert model.config.decoder_layers == 3 and len(model.model.decoder.layers) == 3
    assert [l.self_attn.layer_idx for l in model.model.decoder.layers] == [0, 1, 2]
    assert [l.encoder_attn.layer_idx for l in model.model.decoder.layers] == [0, 1, 2]
    assert model.generation_config.alignment_heads == [[1, 0], [2, 1], [2, 2]]
    assert remap_alignment_heads([[0, 1], [1, 1], [3, 0]], [MergeGroup([0, 1], [1, 1]), MergeGroup([2, 3], [1, 1])]) \
        == [[0, 1], [1, 0]]
    out = model.generate(features(), max_new_tokens=4, do_sample=False)  # kv cache with 3 layers
    assert out.shape[0] == 2


def test_merge_refuses_non_covering_groups():
    with pytest.raises(ValueError):
        merge_decoder(tiny_model(), [MergeGroup([0, 1], [1, 1]), MergeGroup([3], [1])])


# ---- encoder pruning ----------------------------------------------------------------------
def test_prune_encoder_drops_and_renumbers():
    model, ref = tiny_model(), tiny_model()
    prune_encoder(model, [0])
    assert model.config.encoder_layers == 1 and len(model.model.encoder.layers) == 1
    with torch.no_grad():
        ref.model.encoder.layers = torch.nn.ModuleList([ref.model.encoder.layers[1]])
        torch.testing.assert_close(model.model.encoder(features()).last_hidden_state,
                                   ref.model.encoder(features()).last_hidden_state)


def test_layer_scores_find_the_layer_that_does_nothing():
    model = tiny_model(encoder_layers=3)
    with torch.no_grad():  # layer 1 adds zero to the residual stream
        for p in (model.model.encoder.layers[1].self_attn.out_proj, model.model.encoder.layers[1].fc2):
            p.weight.zero_()
            p.bias.zero_()
    scores = score_encoder_layers(model, [features(), features(seed=5)])
    assert len(scores) == 3 and scores[1] < 1e-6 < min(scores[0], scores[2])
    assert choose_layers_to_prune(scores, 1) == [1]
    assert choose_layers_to_prune(scores, 1, protect=[1]) in ([0], [2])
