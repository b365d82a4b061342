"""CompressionSpec applied to a tiny random transformers Whisper: exactness at full rank,
generate() with the kv cache, parameter formula, checkpoint round trip, a tiny training run."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import D, H, V, features, tiny_model, tokens  # noqa: E402

from mlx_bald.compress import (LowRankWhisperAttention, apply_spec, build_from_spec,  # noqa: E402
                               choose_ffn_ranks, count_parameters, ffn_input_rms, expected_parameters, load_compressed, save_compressed)
from mlx_bald.compress.train.distill import DistillConfig, kd_kl_loss, train_decoder  # noqa: E402
from mlx_bald.errors import ModelFormatError  # noqa: E402
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank, MergeGroup  # noqa: E402


def full_rank_spec() -> CompressionSpec:
    attn = {f"encoder.blocks.{i}.attn": AttentionRank(16, 16) for i in range(2)}
    for i in range(4):
        attn[f"decoder.blocks.{i}.attn"] = AttentionRank(16, 16)
        attn[f"decoder.blocks.{i}.cross_attn"] = AttentionRank(16, 16)
    ffn = {f"{s}.blocks.{i}.mlp": FFNRank(64, 64) for s, n in (("encoder", 2), ("decoder", 4)) for i in range(n)}
    return CompressionSpec(embedding_rank=D, attention=attn, ffn=ffn)


def mixed_spec() -> CompressionSpec:
    """Every kind at once, keys in the compressed model's numbering (3 decoder, 1 encoder layer)."""
    return CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.6, 0.4]), MergeGroup([2], [1.0]), MergeGroup([3], [1.0])],
        encoder_pruned=[0], embedding_rank=16,
        attention={"encoder.blocks.0.attn": AttentionRank(10, 12, lora_qk=2, lora_vo=4),
                   "decoder.blocks.1.cross_attn": AttentionRank(16, 8),
                   "decoder.blocks.0.attn": AttentionRank(4, 4)},
        ffn={"encoder.blocks.0.mlp": FFNRank(32, None, lora=4), "decoder.blocks.2.mlp": FFNRank(16, 32)},
        recipe=["test"])


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_full_rank_spec_gives_the_same_logits(impl):
    ref, model = tiny_model(), tiny_model()
    apply_spec(model, full_rank_spec())
    assert isinstance(model.model.decoder.layers[3].encoder_attn, LowRankWhisperAttention)
    for m in (ref, model):
        m.config._attn_implementation = impl
    f, t = features(), tokens()
    with torch.no_grad():
        a = ref(input_features=f, decoder_input_ids=t, output_attentions=impl == "eager")
        b = model(input_features=f, decoder_input_ids=t, output_attentions=impl == "eager")
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    if impl == "eager":  # cross-attention weights (word timestamps) are recorded and equal
        assert len(b.cross_attentions) == 4
        for x, y in zip(a.cross_attentions, b.cross_attentions):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


def test_full_rank_generate_matches_dense_with_kv_cache():
    ref, model = tiny_model(), tiny_model()
    apply_spec(model, full_rank_spec())
    f = features(batch=3, seed=7)
    with torch.no_grad():
        a = ref.generate(f, max_new_tokens=12, do_sample=False)
        b = model.generate(f, max_new_tokens=12, do_sample=False)
    assert len(set(a.flatten().tolist())) > 3  # the tiny model does not just repeat one token
    assert torch.equal(a, b)


def test_incremental_decoding_matches_full_sequence():
    model = tiny_model()
    apply_spec(model, mixed_spec())
    f, t = features(batch=1), tokens(batch=1)
    with torch.no_grad():
        full = model(input_features=f, decoder_input_ids=t, use_cache=False).logits
        enc = model.model.encoder(f)
        out = model(encoder_outputs=enc, decoder_input_ids=t[:, :3], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for i in range(3, t.shape[1]):
            out = model(encoder_outputs=enc, decoder_input_ids=t[:, i:i + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_parameter_count_matches_formula():
    stock = tiny_model()
    assert count_parameters(stock) == expected_parameters(stock.config, CompressionSpec())
    spec = mixed_spec()
    original_config = tiny_model().config
    model = apply_spec(tiny_model(), spec)
    n = count_parameters(model)
    assert n == expected_parameters(original_config, spec) == expected_parameters(model.config, spec)
    assert n < count_parameters(stock)
    assert count_parameters(build_from_spec(original_config, spec)) == n


def test_save_load_round_trip(tmp_path):
    spec = mixed_spec()
    model = apply_spec(tiny_model(), spec)
    with torch.no_grad():  # LoRA as if trained, so baking matters
        for name, p in model.named_parameters():
            if "lora" in name:
                p.add_(0.05 * torch.randn_like(p))
    f, t = features(), tokens()
    with torch.no_grad():
        want = model(input_features=f, decoder_input_ids=t).logits
    out = save_compressed(model, spec, tmp_path / "ckpt")
    assert any("lora" in n for n, _ in model.named_parameters())  # the caller's model is untouched
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlx_bald_compression"]["embedding_rank"] == 16
    assert cfg["decoder_layers"] == 3 and cfg["encoder_layers"] == 1
    loaded, spec2 = load_compressed(out)
    assert spec2 == spec
    names = dict(loaded.state_dict())
    assert names["model.encoder.layers.0.self_attn.q_proj.weight"].shape == (H * 10, D)
    assert "model.encoder.layers.0.self_attn.v_proj.bias" not in names
    assert names["model.encoder.layers.0.fc1.down.weight"].shape == (32, D)
    assert names["model.decoder.layers.2.fc2.up.weight"].shape == (D, 32)
    assert names["model.decoder.embed_tokens.weight_a"].shape == (V, 16)
    assert not any("lora" in k for k in names)
    assert loaded.generation_config.alignment_heads == [[1, 0], [2, 1], [2, 2]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_features=f, decoder_input_ids=t).logits, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # LoRA baked vs unbaked: same greedy tokens through the kv cache
        assert torch.equal(loaded.generate(f, max_new_tokens=6, do_sample=False),
                           model.generate(f, max_new_tokens=6, do_sample=False))
    # saving again over the same folder replaces it atomically
    save_compressed(loaded, spec2, out)
    assert not list(tmp_path.glob(".ckpt*"))


def test_save_refuses_a_spec_that_disagrees(tmp_path):
    model = apply_spec(tiny_model(), mixed_spec())
    wrong = mixed_spec()
    wrong.embedding_rank = 8
    with pytest.raises(ModelFormatError):
        save_compressed(model, wrong, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_kd_loss_zero_for_identical_logits():
    x = torch.randn(2, 5, V)
    assert float(kd_kl_loss(x, x, temperature=2.0)) < 1e-6
    assert float(kd_kl_loss(x, torch.randn(2, 5, V), temperature=2.0)) > 0.01


def test_tiny_distillation_run_decreases_loss(tmp_path):
    teacher = tiny_model()
    student = apply_spec(tiny_model(), CompressionSpec(
        decoder_merge=[MergeGroup([0, 1], [0.5, 0.5]), MergeGroup([2, 3], [0.5, 0.5])], embedding_rank=16))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        enc = teacher.model.encoder(features(batch=4)).last_hidden_state
    ids = torch.randint(0, V - 4, (4, 9), generator=g)
    batch = {"encoder_hidden_states": enc, "decoder_input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    cfg = DistillConfig(lr=3e-3, steps=25, checkpoint_every=10, feature_weight=0.1, seed=0)
    from mlx_bald.compress.train.distill import distill_losses
    before = distill_losses(student, teacher, batch, cfg)["loss"].item()
    stats = train_decoder(student, teacher, lambda epoch: [batch], cfg, out_dir=tmp_path, progress=False)
    after = distill_losses(student, teacher, batch, cfg)["loss"].item()
    assert after < 0.7 * before and stats["loss"] < before
    assert (tmp_path / "distill_checkpoint.pt").is_file()
    # resuming a finished run does no more steps and leaves the weights alone
    w = student.model.decoder.layers[0].fc1.weight.clone()
    train_decoder(student, teacher, lambda epoch: [batch], cfg, out_dir=tmp_path, progress=False)
    assert torch.equal(w, student.model.decoder.layers[0].fc1.weight)


def test_distillation_resume_continues_exactly(tmp_path):
    teacher = tiny_model()
    spec = CompressionSpec(decoder_merge=[MergeGroup([0, 1], [0.5, 0.5]), MergeGroup([2, 3], [0.5, 0.5])],
                           embedding_rank=16)
    with torch.no_grad():
        enc = teacher.model.encoder(features(batch=4)).last_hidden_state
    g = torch.Generator().manual_seed(4)
    data = []
    for i in range(2):
        ids = torch.randint(0, V - 4, (2, 6), generator=g)
        data.append({"encoder_hidden_states": enc[2 * i:2 * i + 2], "decoder_input_ids": ids[:, :-1],
                     "labels": ids[:, 1:]})
    cfg = dict(lr=3e-3, checkpoint_every=3, seed=1)
    straight = apply_spec(tiny_model(), spec)
    train_decoder(straight, teacher, lambda e: data, DistillConfig(steps=8, **cfg), progress=False)
    first = apply_spec(tiny_model(), spec)
    train_decoder(first, teacher, lambda e: data, DistillConfig(steps=5, **cfg), out_dir=tmp_path, progress=False)
    resumed = apply_spec(tiny_model(), spec)  # a fresh process: weights come from the checkpoint
    train_decoder(resumed, teacher, lambda e: data, DistillConfig(steps=8, **cfg), out_dir=tmp_path, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(first.model.decoder.layers[0].fc1.weight, resumed.model.decoder.layers[0].fc1.weight)


def test_apply_spec_leaves_a_shared_config_alone():
    from transformers import WhisperForConditionalGeneration
    teacher = tiny_model()
    student = WhisperForConditionalGeneration(teacher.config)  # built from the same config object
    student.load_state_dict(teacher.state_dict())
    apply_spec(student, mixed_spec())
    assert teacher.config.decoder_layers == 4 and teacher.config.encoder_layers == 2
    assert teacher.config.tie_word_embeddings and not hasattr(teacher.config, "mlx_bald_compression")
    assert student.model.decoder.layers[0].self_attn.config is student.config
    with torch.no_grad():
        assert teacher(input_features=features(), decoder_input_ids=tokens()).logits.shape == (2, 7, V)


def test_round_trip_keeps_a_tied_dense_embedding(tmp_path):
    spec = CompressionSpec(attention={"decoder.blocks.3.cross_attn": AttentionRank(8, 8, 2, 2)},
                           ffn={"decoder.blocks.0.mlp": FFNRank(None, 48)})
    model = apply_spec(tiny_model(), spec)
    loaded, _ = load_compressed(save_compressed(model, spec, tmp_path / "m"))
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight
    assert count_parameters(loaded) == expected_parameters(tiny_model().config, spec) == count_parameters(model)
    f, t = features(), tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_features=f, decoder_input_ids=t).logits,
                                   model(input_features=f, decoder_input_ids=t).logits, atol=1e-5, rtol=1e-5)


def test_rank_choice_with_calibration_feeds_apply_spec():
    model = tiny_model()
    f, t = features(), tokens()
    keys = ["encoder.blocks.0.mlp", "decoder.blocks.3.mlp"]
    calibrate = lambda m: m(input_features=f, decoder_input_ids=t)  # noqa: E731
    rms = ffn_input_rms(model, keys, calibrate)
    assert rms["encoder.blocks.0.mlp.fc1"].shape == (D,) and rms["decoder.blocks.3.mlp.fc2"].shape == (128,)
    ranks = choose_ffn_ranks(model, keys, energy=0.5, act_rms=rms)
    for r in ranks.values():
        for x in (r.fc1_rank, r.fc2_rank):
            assert x is None or (x % 16 == 0 and x * (D + 128) < D * 128)
    assert ranks, "energy 0.5 on random 64x128 weights should allow a saving"
    spec = CompressionSpec(ffn=ranks)
    apply_spec(model, spec, calibrate=calibrate)
    assert count_parameters(model) == expected_parameters(tiny_model().config, spec)
