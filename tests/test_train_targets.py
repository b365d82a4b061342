"""Constant inputs computed once (compress/targets.py): cached cross-attention K/V and cached
teacher targets give the same losses as the live teacher and live projections, on a tiny config."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import SRC, D, V, tiny_model  # noqa: E402

from mlx_bald.compress import apply_spec  # noqa: E402
from mlx_bald.compress.clip_store import clip_file  # noqa: E402
from mlx_bald.compress.data import collate_fn  # noqa: E402
from mlx_bald.compress.distill import DistillConfig, cache_encoder_outputs, distill_losses  # noqa: E402
from mlx_bald.compress.targets import (cache_cross_kv, cache_teacher_targets, cross_kv_batch,  # noqa: E402
                                       cross_kv_mix, kd_topk_loss, teacher_targets_batch)
from mlx_bald.spec import CompressionSpec, MergeGroup  # noqa: E402


def _rows(n: int = 3, length: int = 7) -> list:
    g = torch.Generator().manual_seed(5)
    return [(f"set/c{i}", torch.randint(0, V - 4, (length,), generator=g).tolist(), 2) for i in range(n)]


def _merged(alpha: float = 0.3):
    spec = CompressionSpec(decoder_merge=[MergeGroup([0, 1], [alpha, 1 - alpha]), MergeGroup([2], [1.0]), MergeGroup([3], [1.0])],
                           recipe=["bald"])
    return apply_spec(tiny_model(), spec)


@pytest.fixture()
def caches(tmp_path):
    teacher = tiny_model()
    rows = _rows()
    g = torch.Generator().manual_seed(9)
    states = {cid: torch.randn(SRC, D, generator=g) for cid, _, _ in rows}
    cache_encoder_outputs(teacher, [], tmp_path / "enc", progress=False)  # makes the folder
    from safetensors.torch import save_file
    for cid, s in states.items():  # fp16, as the encoder cache stores them
        save_file({"encoder_hidden_states": s.half()}, str(clip_file(tmp_path / "enc", cid)))
    from mlx_bald.compress.distill import load_cached_encoder_output
    kv = cache_cross_kv(teacher, list(states), lambda c: load_cached_encoder_output(tmp_path / "enc", c),
                        tmp_path / "kv", progress=False)
    return teacher, rows, tmp_path / "enc", kv, tmp_path


def test_merged_layer_cross_kv_is_the_mix_of_its_sources(caches):
    teacher, rows, enc, kv, _ = caches
    student = _merged(0.3)
    mix = cross_kv_mix(student, teacher)
    assert mix is not None and mix.shape == (3, 4) and not mix.requires_grad
    torch.testing.assert_close(mix[0], torch.tensor([0.3, 0.7, 0.0, 0.0]), atol=1e-5, rtol=0)
    live = collate_fn(enc)(rows)
    cached = collate_fn(enc, [cross_kv_batch(kv, mix)], encoder_states=False)(rows)
    assert "encoder_hidden_states" not in cached
    attn = student.model.decoder.layers[0].encoder_attn
    with torch.no_grad():
        want = attn.k_proj(live["encoder_hidden_states"].float())
    got = cached["cross_kv"][0, 0].transpose(1, 2).flatten(2)  # [B, S, H*Dh]
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
    # a trained (no longer mixed) K projection is refused: its K/V must be computed live
    with torch.no_grad():
        attn.k_proj.weight.add_(0.1)
    assert cross_kv_mix(student, teacher) is None


@pytest.mark.parametrize("hidden", [False, True])
def test_cached_targets_give_the_live_losses(caches, hidden):
    teacher, rows, enc, kv, tmp = caches
    student = _merged(0.4)
    cfg = DistillConfig(kd_weight=1.0, ce_weight=1.0, hidden_weight=1.0 if hidden else 0.0,
                        hidden_map=((0, 1), (1, 2), (2, 3)) if hidden else ())
    layers = [1, 2, 3] if hidden else []
    make_teacher = collate_fn(enc, [cross_kv_batch(kv, cross_kv_mix(teacher, teacher))], encoder_states=False)
    targets = cache_teacher_targets(teacher, rows, make_teacher, tmp / "targets", top_k=V, hidden_layers=layers,
                                    progress=False)
    live = distill_losses(student, teacher, collate_fn(enc)(rows), cfg)
    batch = collate_fn(enc, [cross_kv_batch(kv, cross_kv_mix(student, teacher)), teacher_targets_batch(targets)],
                       encoder_states=False)(rows)
    cached = distill_losses(student, None, batch, cfg)  # no teacher at all
    for k in ("loss", "ce", "kd", "hidden"):
        assert cached[k].item() == pytest.approx(live[k].item(), rel=2e-3, abs=1e-4), k
    assert live["kd"].item() > 0.01
    # gradients agree too
    g_live = torch.autograd.grad(live["loss"], student.model.decoder.layers[0].fc1.weight)[0]
    g_cached = torch.autograd.grad(cached["loss"], student.model.decoder.layers[0].fc1.weight)[0]
    torch.testing.assert_close(g_cached, g_live, atol=1e-3, rtol=2e-2)


def test_topk_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_at_t1():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 50, generator=g) * 3, torch.randn(5, 50, generator=g) * 3
    from mlx_bald.compress.distill import kd_kl_loss

    for temp in (1.0, 2.0):
        full = kd_kl_loss(s, t, None, temp)
        vals, idx = t.topk(50, -1)
        exact = kd_topk_loss(s, vals, idx, torch.full((5,), -float("inf")), temp)
        assert exact.item() == pytest.approx(full.item(), rel=1e-5)
    vals, idx = t.topk(10, -1)
    rest = torch.log((t.exp().sum(-1) - vals.exp().sum(-1)))
    part = kd_topk_loss(s, vals, idx, rest, 1.0)
    assert 0 < part.item() <= kd_kl_loss(s, t, None, 1.0).item() + 1e-6


def test_teacher_targets_are_rebuilt_for_new_tokens(caches):
    teacher, rows, enc, kv, tmp = caches
    make = collate_fn(enc)
    folder = cache_teacher_targets(teacher, rows, make, tmp / "t", top_k=8, progress=False)
    first = clip_file(folder, rows[0][0]).stat().st_mtime_ns
    changed = [(rows[0][0], rows[0][1][:-1] + [1], 2)] + rows[1:]
    cache_teacher_targets(teacher, changed, make, folder, top_k=8, progress=False)
    assert clip_file(folder, rows[0][0]).stat().st_mtime_ns != first
    batch = collate_fn(enc, [teacher_targets_batch(folder)])(changed)
    assert batch["teacher_top_index"].shape == (3, 6, 8)
