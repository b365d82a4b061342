"""Constant inputs computed once (compress/train/targets.py): cached cross-attention K/V and cached
teacher targets give the same losses as the live teacher and live projections, on a tiny config."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_compress_ops import SRC, D, V, tiny_model  # noqa: E402

from mlx_bald.compress import apply_spec  # noqa: E402
from mlx_bald.compress.train.clip_store import clip_file  # noqa: E402
from mlx_bald.compress.train.data import collate_fn  # noqa: E402
from mlx_bald.compress.train.distill import DistillConfig, cache_encoder_outputs, distill_losses  # noqa: E402
from mlx_bald.compress.train.targets import (cache_cross_kv, cache_teacher_targets, cross_kv_batch,  # noqa: E402
                                       cross_kv_mix, teacher_targets_batch)
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
    from mlx_bald.compress.train.distill import load_cached_encoder_output
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
    targets = cache_teacher_targets(teacher, rows, make_teacher, tmp / "targets", hidden_layers=layers,
                                    progress=False)
    live = distill_losses(student, teacher, collate_fn(enc)(rows), cfg)
    batch = collate_fn(enc, [cross_kv_batch(kv, cross_kv_mix(student, teacher)), teacher_targets_batch(targets)],
                       encoder_states=False)(rows)
    assert "encoder_hidden_states" not in batch
    cached = distill_losses(student, None, batch, cfg)  # no teacher at all
    for k in ("loss", "ce", "kd", "hidden"):
        assert cached[k].item() == pytest.approx(live[k].item(), rel=2e-3, abs=1e-4), k
    assert live["kd"].item() > 0.01
    # gradients agree too
    g_live = torch.autograd.grad(live["loss"], student.model.decoder.layers[0].fc1.weight)[0]
    g_cached = torch.autograd.grad(cached["loss"], student.model.decoder.layers[0].fc1.weight)[0]
    torch.testing.assert_close(g_cached, g_live, atol=1e-3, rtol=2e-2)


def test_teacher_targets_are_rebuilt_for_new_tokens(caches):
    teacher, rows, enc, kv, tmp = caches
    make = collate_fn(enc)
    folder = cache_teacher_targets(teacher, rows, make, tmp / "t", progress=False)
    first = clip_file(folder, rows[0][0]).stat().st_mtime_ns
    changed = [(rows[0][0], rows[0][1][:-1] + [1], 2)] + rows[1:]
    cache_teacher_targets(teacher, changed, make, folder, progress=False)
    assert clip_file(folder, rows[0][0]).stat().st_mtime_ns != first
    batch = collate_fn(enc, [teacher_targets_batch(folder)])(changed)
    assert batch["teacher_logits"].shape == (3, 6, V)


def test_row_gradient_lookup_gives_autograds_embedding_gradient(caches):
    """decoder_forward adds the token lookup's gradient into the tied embedding's rows in place;
    the total must equal autograd's dense gradient of the plain forward, pad rows excluded."""
    from mlx_bald.compress.train.distill import decoder_forward

    _, rows, enc, _, _ = caches
    batch = collate_fn(enc)(rows)
    pad = tiny_model().model.decoder.embed_tokens.padding_idx
    if pad is not None and pad < V:
        batch["decoder_input_ids"][0, -1] = pad  # a padding token in the input: its row gets no lookup gradient
    grads = []
    for ours in (True, False):
        student = _merged(0.4).train()
        w = student.model.decoder.embed_tokens.weight
        assert w is student.proj_out.weight  # tied
        if ours:
            hidden, _ = decoder_forward(student, batch)
        else:
            hidden = student.model(encoder_outputs=(batch["encoder_hidden_states"].float(),),
                                   decoder_input_ids=batch["decoder_input_ids"], use_cache=False).last_hidden_state
        loss = (student.proj_out(hidden).log_softmax(-1)[..., 3]).sum() + hidden.pow(2).sum()
        loss.backward()
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("with_teacher", [True, False])
def test_fused_ce_and_kl_match_the_op_by_op_losses_and_gradients(with_teacher):
    from torch.nn import functional as F

    from mlx_bald.compress.train.distill import kd_kl_loss
    from mlx_bald.compress.train.logit_losses import ce_and_kl

    g = torch.Generator().manual_seed(3)
    n, vocab = 37, 300  # more rows than one chunk, a ragged last chunk
    s0, t = torch.randn(n, vocab, generator=g) * 4, torch.randn(n, vocab, generator=g) * 4
    labels = torch.randint(0, vocab, (n,), generator=g)
    results = []
    for fused in (True, False):
        s = s0.clone().requires_grad_()
        log_t = torch.tensor(0.6, requires_grad=True)
        temp = log_t.exp()
        if fused:
            ce, kl = ce_and_kl(s, t if with_teacher else None, labels, temp)
        else:
            ce = F.cross_entropy(s, labels)
            kl = kd_kl_loss(s, t, None, temp) if with_teacher else torch.zeros(())
        (0.7 * ce + 1.3 * kl).backward()
        results.append((ce.item(), kl.item(), s.grad, log_t.grad))
    (ce_a, kl_a, gs_a, gt_a), (ce_b, kl_b, gs_b, gt_b) = results
    assert ce_a == pytest.approx(ce_b, rel=1e-5) and kl_a == pytest.approx(kl_b, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(gs_a, gs_b, atol=1e-6, rtol=1e-4)
    if with_teacher:
        assert gt_b.abs().item() > 1e-3
        assert gt_a.item() == pytest.approx(gt_b.item(), rel=1e-4)
    else:
        assert gt_a is None or gt_a.item() == 0
