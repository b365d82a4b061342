"""AdaPTwin / pruning / combined recipes on a tiny random Whisper with random "audio" (seconds)."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import zlib
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from conftest import run_cli  # noqa: E402
from test_compress_ops import N_MELS, SRC, tiny_model  # noqa: E402

from converters.torch_to_mlx import convert_checkpoint, sinusoids  # noqa: E402
from mlx_bald.cli.compress import _encoder, _recipe  # noqa: E402
from mlx_bald.compress import apply_spec, count_parameters, expected_parameters, load_compressed, save_compressed  # noqa: E402
from mlx_bald.compress.train.layer_cache import HiddenStates, LayerTrainConfig, pack_windows, train_layer  # noqa: E402
from mlx_bald.compress.recipes.encoder import EncoderOptions, EncoderRun, run_encoder, select_layers  # noqa: E402
from mlx_bald.compress.recipes.combine import combine  # noqa: E402
from mlx_bald.compress.train.bridges import bridge_plan  # noqa: E402
from mlx_bald.errors import MlxBaldError  # noqa: E402
from mlx_bald.spec import AttentionRank, CompressionSpec, FFNRank, MergeGroup  # noqa: E402


def featurize(clip) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(clip.id.encode()))
    return torch.randn(N_MELS, 2 * SRC, generator=g)


def clips(prefix: str, n: int) -> list:
    return [SimpleNamespace(id=f"{prefix}/clip-{i}") for i in range(n)]


def tiny_run(tmp_path, base, **opts) -> dict:
    o = EncoderOptions(out=tmp_path / "run", lr=3e-3, batch_size=2, pack_seconds=None, **({"train_audio": ()} | opts))
    heldout = clips("dev", 4)
    for i, c in enumerate(heldout):  # 3-6 of the 8 encoder frames are "speech", the rest padding
        c.audio = torch.zeros(320 * (3 + i)).numpy()
    return dict(o=o, base=base, train=clips("train", 8), heldout=heldout, featurize=featurize,
                states_dir=tmp_path / "states")


@torch.no_grad()
def encode(model, feats: torch.Tensor) -> torch.Tensor:
    return model.model.encoder(feats).last_hidden_state


def test_select_layers_takes_lowest_errors_closest_to_target():
    errors = {0: 0.5, 1: 0.1, 2: 0.3, 3: 0.2}
    savings = {j: 10 for j in errors}
    assert select_layers(errors, savings, 40, 0.0) == []
    assert select_layers(errors, savings, 40, 0.5) == [1, 3]
    assert select_layers(errors, savings, 40, 0.6) == [1, 3]  # 0.5 is nearer than 0.75
    assert select_layers(errors, savings, 40, 0.7) == [1, 2, 3]
    assert select_layers(errors, savings, 40, 1.0) == [0, 1, 2, 3]


def test_pack_windows_uses_every_clip_once_within_budget():
    rng = torch.Generator().manual_seed(0)
    seconds = torch.rand(40, generator=rng) * 2 + 1  # 1-3 s clips
    audio = [SimpleNamespace(id=f"c{i}", audio=torch.zeros(int(s * 16000)).numpy()) for i, s in enumerate(seconds)]
    wins = pack_windows(audio, seed=3, seconds=(5.0, 12.0))
    assert sorted(c.id for w in wins for c in w.clips) == sorted(c.id for c in audio)
    lengths = [len(w.audio) / 16000 for w in wins]
    assert all(n <= 12.0 + 1e-6 or len(w.clips) == 1 for n, w in zip(lengths, wins))
    assert len(wins) <= len(audio) // 2 and sum(lengths) == sum(len(c.audio) for c in audio) / 16000
    assert len({w.id for w in wins}) == len(wins)
    assert [w.id for w in pack_windows(audio, seed=3, seconds=(5.0, 12.0))] == [w.id for w in wins]


@pytest.mark.parametrize("pruned, plan", [
    ([2], {3: (2, 4)}), ([2, 3], {4: (2, 5)}), ([0], {1: (0, 2)}), ([5], {4: (4, 6)}),
    ([4, 5], {3: (3, 6)}), ([1, 3], {2: (1, 3), 4: (3, 5)}), ([2, 4, 5], {3: (2, 6)})])
def test_bridge_plan(pruned, plan):
    assert bridge_plan(pruned, 6) == plan


def test_bridge_plan_rejects_bad_layers():
    for bad in ([6], [0, 1, 2, 3, 4, 5]):
        with pytest.raises(ValueError):
            bridge_plan(bad, 6)


def test_variable_compression_picks_layers_by_measured_error(tmp_path):
    base = tiny_model(encoder_layers=4, encoder_ffn_dim=256, decoder_ffn_dim=256)  # MLX wants ffn = 4 d
    with torch.no_grad():  # and Whisper's sinusoidal encoder positions
        pos = base.model.encoder.embed_positions.weight
        pos.copy_(torch.from_numpy(sinusoids(*pos.shape)).float())
    kw = tiny_run(tmp_path, base, epochs=4, init="asvd")  # whitened init already fits this tiny data
    run = EncoderRun(kw.pop("o"), progress=False, **kw)
    stats = run.train_twins()
    for j in range(4):  # layer-wise fine-tuning beats the plain SVD on held-out clips
        assert stats[str(j)]["heldout_rel_error"] < stats[str(j)]["heldout_rel_error_svd"], (j, stats[str(j)])
    bad = run.twin(2)  # spoil one trained twin: its measured error must keep it out
    with torch.no_grad():
        bad.fc1.up.weight.mul_(4.0)
    save_file({k: v.contiguous() for k, v in bad.state_dict().items()}, str(run._twin_path(2)))
    errors = run.output_errors([])
    assert max(errors, key=errors.get) == 2
    best3 = sorted(sorted(errors, key=errors.get)[:3])
    assert run.choose([], 0.35) == best3 and 2 not in best3  # one twin saves ~50% of a layer: 3 -> 37%

    folder = run.build(0, 0.35, tmp_path / "c35")
    model, spec = load_compressed(folder)
    assert sorted(spec.attention) == [f"encoder.blocks.{j}.attn" for j in best3]
    assert sorted(spec.ffn) == [f"encoder.blocks.{j}.mlp" for j in best3] and spec.recipe == ["adaptwin"]
    assert count_parameters(model) == expected_parameters(base.config, spec)
    summary = run.report["results"]["c35"]
    assert abs(summary["compression_of_kept_layers"] - 0.35) < 0.25 / 2
    assert summary["params"] == count_parameters(model) < count_parameters(base)
    h = torch.randn(2, SRC, 64)
    with torch.no_grad():
        for j in range(4):  # saved (LoRA baked) layers compute what the trained layers do
            want = (run.twin(j) if j in best3 else base.model.encoder.layers[j])(h, None)
            torch.testing.assert_close(model.model.encoder.layers[j](h, None), want, atol=1e-4, rtol=1e-4)
    mlx_dir = convert_checkpoint(folder, tmp_path / "mlx")  # the CLI's last step accepts the result
    assert json.loads((mlx_dir / "config.json").read_text())["compression"]["attention"] == spec.to_dict()["attention"]


def test_prune_recipe_end_to_end_recovers_the_output(tmp_path):
    base = tiny_model(encoder_layers=4)
    kw = tiny_run(tmp_path, base, adaptwin=False, prune=1, bridge_epochs=12)
    o = kw.pop("o")
    folder = run_encoder(o, tmp_path / "student", progress=False, **kw)
    model, spec = load_compressed(folder)
    report = EncoderRun(o, progress=False, **kw).report  # a rerun reuses everything on disk
    with pytest.raises(ValueError, match="other epochs"):  # ... and refuses to mix in other settings
        EncoderRun(dataclasses.replace(o, epochs=o.epochs + 1), progress=False, **kw)
    dropped = report["prune"]["1"]["layers"]
    assert spec.encoder_pruned == dropped and len(dropped) == 1 and spec.recipe == ["prune"]
    assert len(model.model.encoder.layers) == 3 and not spec.attention and not spec.ffn
    assert count_parameters(model) == expected_parameters(base.config, spec)
    (bridge,) = report["bridges"].values()
    assert bridge["kind"] == "dense" and bridge["heldout_rel_error"] < bridge["heldout_rel_error_before"]

    feats = torch.stack([featurize(c) for c in clips("dev", 4)])
    want = encode(base, feats)
    cut_only = apply_spec(copy.deepcopy(base), CompressionSpec(encoder_pruned=dropped))
    err_cut = float(((encode(cut_only, feats) - want) ** 2).mean())
    err_recovered = float(((encode(model, feats) - want) ** 2).mean())
    assert err_recovered < 0.8 * err_cut, (err_recovered, err_cut)


def test_layer_training_resumes_exactly(tmp_path, monkeypatch):
    base = tiny_model(encoder_layers=2)
    states = HiddenStates(tmp_path / "states")
    ids = [c.id for c in clips("train", 6)]
    assert states.build(base, ((c.id, featurize(c)) for c in clips("train", 6)), progress=False) == 6
    cfg = LayerTrainConfig(lr=1e-3, epochs=2, batch_size=2, checkpoint_every=2)
    full = copy.deepcopy(base.model.encoder.layers[1])
    train_layer(full, states, ids, 1, 2, cfg, progress=False)

    real_load, calls = states.load, []

    def failing_load(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_load(*a)

    monkeypatch.setattr(states, "load", failing_load)
    ckpt = tmp_path / "layer.ckpt"
    meta = {"kl_weight": 0.0}
    with pytest.raises(KeyboardInterrupt):
        train_layer(copy.deepcopy(base.model.encoder.layers[1]), states, ids, 1, 2, cfg, ckpt, progress=False,
                    meta=meta)
    monkeypatch.setattr(states, "load", real_load)
    saved = ckpt.read_bytes()
    with pytest.raises(MlxBaldError, match="kl_weight"):  # another loss must not continue this one
        train_layer(copy.deepcopy(base.model.encoder.layers[1]), states, ids, 1, 2, cfg, ckpt, progress=False,
                    meta={"kl_weight": 1.0})
    assert ckpt.read_bytes() == saved
    resumed = copy.deepcopy(base.model.encoder.layers[1])
    stats = train_layer(resumed, states, ids, 1, 2, cfg, ckpt, progress=False, meta=meta)
    assert stats["steps"] == 6
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def _save(model, spec, path):
    return save_compressed(apply_spec(model, spec), spec, path)


def test_combine_joins_bald_decoder_with_compressed_encoder(tmp_path):
    base = tiny_model(encoder_layers=3)
    dec_spec = CompressionSpec(decoder_merge=[MergeGroup([0, 1], [0.6, 0.4]), MergeGroup([2, 3], [0.5, 0.5])],
                               embedding_rank=8, recipe=["bald"])
    enc_spec = CompressionSpec(encoder_pruned=[1], attention={"encoder.blocks.0.attn": AttentionRank(10, 10)},
                               ffn={"encoder.blocks.1.mlp": FFNRank(22, 22)}, recipe=["prune", "adaptwin"])
    d = _save(copy.deepcopy(base), dec_spec, tmp_path / "dec")
    e = _save(copy.deepcopy(base), enc_spec, tmp_path / "enc")
    out = combine(d, e, tmp_path / "both", base=base)
    model, spec = load_compressed(out)
    dec, _ = load_compressed(d)
    enc, _ = load_compressed(e)
    assert spec.recipe == ["bald", "prune", "adaptwin"]
    assert spec.decoder_merge == dec_spec.decoder_merge and spec.embedding_rank == 8
    assert spec.encoder_pruned == [1] and set(spec.attention) == {"encoder.blocks.0.attn"}
    assert count_parameters(model) == expected_parameters(base.config, spec)
    feats = torch.stack([featurize(c) for c in clips("dev", 2)])
    torch.testing.assert_close(encode(model, feats), encode(enc, feats))
    states = encode(base, feats)
    tokens = torch.tensor([[97, 5, 6, 7]] * 2)
    with torch.no_grad():
        got = model(encoder_outputs=(states,), decoder_input_ids=tokens).logits
        want = dec(encoder_outputs=(states,), decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="encoder is compressed"):
        combine(e, d, tmp_path / "swapped")
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.model.encoder.layers[0].fc1.weight.add_(0.1)
    with pytest.raises(ValueError, match="differs from the base"):
        combine(d, e, tmp_path / "bad", base=other)


def test_cli_recipe_names_and_order():
    assert _recipe("adaptwin+bald") == ("bald", "adaptwin")
    assert _recipe("prune+adaptwin+bald") == ("bald", "prune", "adaptwin")
    for bad in ("bald+bald", "quantize", "", "prune+"):
        if bad == "prune+":
            assert _recipe(bad) == ("prune",)
            continue
        with pytest.raises(argparse.ArgumentTypeError):
            _recipe(bad)
    args = SimpleNamespace(recipe=("adaptwin",), prune=2)
    with pytest.raises(argparse.ArgumentTypeError, match="--prune needs"):
        _encoder(args, None)


@pytest.mark.slow
def test_cli_prune_plus_adaptwin_on_real_weights(tmp_path):
    """The real CLI path on whisper-base with a handful of Czech clips (about a minute)."""
    out = tmp_path / "run"
    r = run_cli("compress", "--recipe", "adaptwin+prune", "--prune", "1", "--compression", "0.25",
                "--train-clips", "4", "--heldout-clips", "4", "--layer-epochs", "1", "--recover-epochs", "1",
                "--train-audio", "",
                "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((out / "mlx" / "config.json").read_text())
    spec = CompressionSpec.from_dict(config["compression"])
    report = json.loads((out / "report.json").read_text())
    assert spec.recipe == ["prune", "adaptwin"] and len(spec.encoder_pruned) == 1
    assert config["n_audio_layer"] == 5 and len(spec.attention) == len(spec.ffn) == 3  # 3 of 5 twins ~ 25-30%
    assert report["results"]["student"]["params"] == report["results"]["student"]["expected_params"]
    assert report["results"]["student"]["recovery"]["epochs"] == 1


def test_recovery_trains_the_built_encoder_end_to_end(tmp_path):
    from mlx_bald.compress.train.layer_cache import LayerStack, relative_output_error

    base = tiny_model(encoder_layers=4)
    kw = tiny_run(tmp_path, base, epochs=1, recover_epochs=6, recover_lr=3e-3)
    run = EncoderRun(kw.pop("o"), progress=False, **kw)
    run.train_twins()
    folder = run.build(1, 0.5, tmp_path / "rec")
    summary = run.report["results"]["rec"]
    rec = summary["recovery"]
    assert rec["epochs"] == 6 and rec["steps"] == 6 * 4
    assert rec["heldout_speech_output_error"] < rec["heldout_speech_output_error_before"], rec
    model, spec = load_compressed(folder)
    assert spec.notes["encoder_recipe"]["recovery"] == {"epochs": 6, "lr": 3e-3, "kl_weight": 0.0,
                                                        "audio": ["fillets-cs:train"]}
    assert len(model.model.encoder.layers) == 3 and summary["twins"]
    assert base.model.encoder.layer_norm.weight.grad is None  # the final norm stays frozen
    # the saved checkpoint (LoRA baked) is the recovered encoder, not the layer-wise one
    stack = LayerStack(list(model.model.encoder.layers), model.model.encoder.layer_norm)
    saved = relative_output_error(stack, run.states, run.heldout_ids, 0, 4, frames=run.heldout_frames)
    assert saved == pytest.approx(rec["heldout_speech_output_error"], rel=1e-3)
    assert not (run.work / "recover" / "rec.ckpt").exists()


def test_recovery_with_decoder_kl_labels_windows_once_and_trains_differently(tmp_path):
    base = tiny_model(encoder_layers=2, vocab_size=51865, max_target_positions=448)
    kw = tiny_run(tmp_path, base, epochs=1, recover_epochs=2, recover_lr=3e-3)
    run = EncoderRun(kw.pop("o"), progress=False, **kw)
    run.train_twins()
    plain = run.build(0, 0.5, tmp_path / "plain")
    run.o = dataclasses.replace(run.o, recover_kl=1.0)
    with_kl = run.build(0, 0.5, tmp_path / "kl")
    labels = json.loads((run.work / "window_labels.json").read_text())
    assert set(labels) == set(run.train_ids)
    assert run.report["results"]["kl"]["recovery"]["kl_weight"] == 1.0
    assert load_compressed(with_kl)[1].notes["encoder_recipe"]["recovery"]["kl_weight"] == 1.0
    a, b = (load_compressed(f)[0].model.encoder.state_dict() for f in (plain, with_kl))
    assert a.keys() == b.keys() and any(not torch.allclose(a[k], b[k]) for k in a)  # the KL changed the result
    assert all(p.grad is None for p in base.model.decoder.parameters())


def test_mixed_recovery_adds_the_other_sets_windows(tmp_path, monkeypatch):
    import mlx_bald.data as data

    from mlx_bald.data.clips import Clip

    def fake_set(name):  # 6 one-second clips per set; fillets languages share line ids
        return [Clip(id=f"lvl/line-{i}", path=tmp_path / "none.ogg", text="", language="xx",
                     _audio=torch.zeros(16000).numpy()) for i in range(6)]

    monkeypatch.setattr(data, "load_set", fake_set)
    base = tiny_model(encoder_layers=2)
    kw = tiny_run(tmp_path, base, epochs=1, recover_epochs=1, recover_audio=("fillets-nl:train", "tts-en:train"),
                  audio_clips=4)
    for c in kw["train"]:
        c.audio = torch.zeros(16000).numpy()
    o = kw.pop("o")
    run = EncoderRun(dataclasses.replace(o, pack_seconds=(1.5, 2.5)), progress=False, **kw)
    n_train, n_extra = len(run.train_ids), len(run.extra_ids)
    assert 4 <= n_extra <= 8 and len(set(run.extra_ids)) == n_extra  # 2 sets x 4 clips, 1-2 per window
    assert {i.split("/")[0] for i in run.extra_ids} == {"fillets-nl:train", "tts-en:train"}
    assert all(run.states.has(i) for i in run.extra_ids)
    run.train_twins()
    run.build(0, 0.5, tmp_path / "only-cs", mixed=False)
    run.build(0, 0.5, tmp_path / "mixed")
    rec = {k: run.report["results"][k]["recovery"] for k in ("only-cs", "mixed")}
    assert rec["only-cs"]["windows"] == n_train and rec["mixed"]["windows"] == n_train + n_extra
    assert rec["mixed"]["audio"] == ["fillets-cs:train", "fillets-nl:train", "tts-en:train"]


def test_train_audio_joins_the_layer_wise_windows(tmp_path, monkeypatch):
    """--train-audio sets are packed into windows that every stage trains on; a recovery set
    that is already a train set adds nothing twice."""
    import mlx_bald.data as data

    from mlx_bald.data.clips import Clip

    def fake_set(name):
        return [Clip(id=f"lvl/line-{i}", path=tmp_path / "none.ogg", text="", language="xx",
                     _audio=torch.zeros(16000).numpy()) for i in range(6)]

    monkeypatch.setattr(data, "load_set", fake_set)
    kw = tiny_run(tmp_path, tiny_model(encoder_layers=2), epochs=1, train_audio=("fillets-nl:train",),
                  recover_audio=("fillets-nl:train", "tts-en:train"), audio_clips=4)
    for c in kw["train"]:
        c.audio = torch.zeros(16000).numpy()
    o = kw.pop("o")
    run = EncoderRun(dataclasses.replace(o, pack_seconds=(1.5, 2.5)), progress=False, **kw)
    extra_train = [i for i in run.train_ids if i.startswith("fillets-nl:train/")]
    assert 2 <= len(extra_train) <= 4 and len(run.train_ids) > len(extra_train)
    assert {i.split("/")[0] for i in run.extra_ids} == {"tts-en:train"}  # nl is already trained on
    assert all(run.states.has(i) for i in run.train_ids + run.extra_ids)
    stats = run.train_twins()
    assert stats["0"]["steps"] == -(-len(run.train_ids) // o.batch_size)  # one epoch over all windows
    assert run.report["data"]["train_audio"] == ["fillets-nl:train"]


def test_decoder_kl_is_zero_at_the_target_and_trains_only_the_encoder_output():
    from mlx_bald.compress.train.recovery import DecoderKL

    model = tiny_model(vocab_size=51865, max_target_positions=448)
    kl = DecoderKL(model, {"a": "hello world", "b": "ahoj světe, jak se máš"}, {"a": "en", "b": "cs"}, weight=2.0)
    target = torch.randn(2, 8, 64)
    assert float(kl(["a", "b"], target.clone(), target)) == pytest.approx(0.0, abs=1e-5)
    out = (target + 0.5 * torch.randn(2, 8, 64)).requires_grad_(True)
    loss = kl(["b", "a"], out, target)
    loss.backward()
    assert loss.item() > 1e-4 and float(out.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.model.decoder.parameters())
