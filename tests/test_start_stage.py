"""The start stage of a depth-reduced decoder (recipes/start.py) on tiny random Whispers: layer
choice, least-squares patches (fitted, folded, converted), local distillation, scores."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlx_bald.compress.ops.model import apply_spec, load_compressed, save_compressed  # noqa: E402
from mlx_bald.compress.ops.patch import fit_fc2_patch, fold_into  # noqa: E402
from mlx_bald.compress.recipes.start import (StartConfig, build_start, fit_patches, kept_groups,  # noqa: E402
                                             spaced_layers, start_groups)
from mlx_bald.compress.train.decoder_states import layer_rows, teacher_forced_scores  # noqa: E402
from mlx_bald.compress.train.local import LocalConfig, train_local  # noqa: E402
from mlx_bald.spec import CompressionSpec, SpecError  # noqa: E402
from tests.test_compress_ops import D, SRC, V, tiny_model  # noqa: E402


def _batches(n: int, seed: int, length: int = 9, batch: int = 4) -> list[dict]:
    """Random encoder states and token rows; the last rows end early (padding, IGNORE labels)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V - 4, (batch, length), generator=g)
        labels = torch.randint(0, V - 4, (batch, length), generator=g)
        labels[:, 0] = -100  # a prompt position
        labels[-1, length - 3:] = -100  # padding
        out.append({"encoder_hidden_states": torch.randn(batch, SRC, D, generator=g),
                    "decoder_input_ids": ids, "labels": labels})
    return out


def _block_error(student, teacher, groups, batches) -> float:
    t = layer_rows(teacher, batches, {g.layers[-1]: ("y",) for g in groups})
    s = layer_rows(student, batches, {j: ("y",) for j in range(len(groups))})
    num = sum(float(((s[j]["y"] - t[g.layers[-1]]["y"]) ** 2).sum()) for j, g in enumerate(groups))
    return num / sum(float((t[g.layers[-1]]["y"] ** 2).sum()) for g in groups)


def test_spaced_layers_keep_first_and_last():
    assert spaced_layers(6, 3) == [0, 2, 5]  # distil-whisper's 6 -> 3
    assert spaced_layers(4, 2) == [0, 3]
    assert spaced_layers(32, 2) == [0, 31]
    groups = kept_groups([0, 2, 5], 6)
    assert [g.layers for g in groups] == [[0, 1], [2, 3, 4], [5]]
    assert [g.weights for g in groups] == [[1.0, 0.0], [1.0, 0.0, 0.0], [1.0]]
    with pytest.raises(SpecError):
        spaced_layers(3, 4)
    with pytest.raises(SpecError):
        start_groups(StartConfig(layers="pairs"), 6, 2)  # pairs halve the decoder


def test_selected_layers_are_the_teachers_own():
    teacher = tiny_model()
    student = apply_spec(tiny_model(), CompressionSpec(decoder_merge=kept_groups([0, 3], 4)))
    for j, k in enumerate([0, 3]):
        for (name, a), b in zip(teacher.model.decoder.layers[k].state_dict().items(),
                                student.model.decoder.layers[j].state_dict().values()):
            torch.testing.assert_close(b, a, msg=name)


def test_patch_reduces_the_block_error_on_held_out_states():
    teacher = tiny_model()
    groups = kept_groups(spaced_layers(4, 2), 4)
    fit, held_out = _batches(12, 0), _batches(4, 1)
    for kind in ("map", "refit"):
        student = apply_spec(tiny_model(), CompressionSpec(decoder_merge=groups))
        before = _block_error(student, teacher, groups, held_out)
        report = fit_patches(student, teacher, groups, fit, kind, ridge=1e-2)
        after = _block_error(student, teacher, groups, held_out)
        assert after < 0.8 * before, (kind, before, after)
        assert all(r["rel_err_after"] < r["rel_err_before"] for r in report)


def test_folded_patch_gives_exactly_the_fitted_layer():
    """The model after folding computes residual + hidden @ W^T + b, the fitted map, to float error."""
    model = tiny_model()
    batches = _batches(3, 2)
    rows = layer_rows(model, batches, {1: ("a", "f", "y")})[1]
    residual = rows["y"] - rows["f"]
    target = rows["y"] + 0.1 * torch.randn_like(rows["y"])
    fc2 = model.model.decoder.layers[1].fc2
    for kind in ("map", "refit"):
        w, b = fit_fc2_patch(fc2, rows["a"], residual, target, kind, ridge=1e-3)
        fold_into(fc2, w, b)
        got = layer_rows(model, batches, {1: ("y",)})[1]["y"]
        torch.testing.assert_close(got, residual + rows["a"] @ w.T + b, atol=1e-4, rtol=1e-4)
        rows = layer_rows(model, batches, {1: ("a", "f", "y")})[1]
        residual = rows["y"] - rows["f"]


def test_a_patch_with_huge_ridge_changes_nothing():
    model = tiny_model()
    batches = _batches(2, 3)
    rows = layer_rows(model, batches, {0: ("a", "f", "y")})[0]
    fc2 = model.model.decoder.layers[0].fc2
    w, b = fit_fc2_patch(fc2, rows["a"], rows["y"] - rows["f"], torch.randn_like(rows["y"]), "map", ridge=1e9)
    torch.testing.assert_close(w, fc2.weight, atol=1e-4, rtol=1e-3)


def test_local_distillation_lowers_every_layers_loss():
    teacher = tiny_model()
    groups = kept_groups([0, 3], 4)
    batches = _batches(6, 4)
    for inputs in ("student", "teacher"):
        student = apply_spec(tiny_model(), CompressionSpec(decoder_merge=groups))
        first = train_local(student, teacher, groups, batches, LocalConfig(lr=1e-3, steps=1, inputs=inputs),
                            progress=False)
        last = train_local(student, teacher, groups, batches, LocalConfig(lr=1e-3, steps=60, inputs=inputs),
                           progress=False)
        assert last["loss"] < 0.7 * first["loss"] and last["layer0"] < first["layer0"], (inputs, first, last)
        assert all(p.requires_grad for p in student.parameters())  # handed back trainable


def test_teacher_agrees_with_its_own_argmax_tokens():
    model = tiny_model()
    batches = _batches(2, 5)
    with torch.no_grad():
        for b in batches:  # labels := the model's own argmax, where a label is asked for
            logits = model(encoder_outputs=(b["encoder_hidden_states"],), decoder_input_ids=b["decoder_input_ids"]).logits
            b["labels"] = torch.where(b["labels"] != -100, logits.argmax(-1), b["labels"])
    assert teacher_forced_scores(model, batches, eot=V - 1)["agreement"] == 100.0
    other = teacher_forced_scores(tiny_model(seed=7), batches, eot=V - 1)
    assert other["agreement"] < 50.0 and other["ce"] > 0


def test_started_student_converts_and_runs_in_mlx_unchanged(tmp_path):
    mx = pytest.importorskip("mlx.core")
    from converters.torch_to_mlx import convert_checkpoint
    from mlx_bald.load import load_model
    from tests.test_convert import _stock_tiny

    teacher = _stock_tiny()
    student, spec, report = build_start(teacher, 2, _batches(4, 6),
                                        StartConfig(local_steps=5, patch="refit", ridge=1.0), progress=False)
    assert len(report["patch"]) == 2 and "local" in report
    ckpt = save_compressed(student, spec, tmp_path / "torch")
    out = convert_checkpoint(ckpt, tmp_path / "mlx", dtype="float32")
    assert CompressionSpec.from_dict(json.loads((out / "config.json").read_text())["compression"]) == spec
    torch_model, _ = load_compressed(ckpt)
    mlx_model = load_model(out, dtype=mx.float32)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, teacher.config.num_mel_bins, 2 * SRC, generator=g)
    tokens = torch.randint(0, 97, (2, 7), generator=g)
    with torch.no_grad():
        ref = torch_model(input_features=feats, decoder_input_ids=tokens).logits.numpy()
    got = np.array(mlx_model(mx.array(feats.numpy().transpose(0, 2, 1)), mx.array(tokens.numpy())))
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
