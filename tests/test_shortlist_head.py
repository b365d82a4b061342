"""The shortlist output head (issue #16): the spec field, the converter (`convert --head`), the
MLX module's exactness where it promises it, and on real weights the same hypotheses as base."""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from converters.shortlist_head import add_shortlist_head, parse_head, shortlist_factors
from mlx_bald.errors import ModelFormatError
from mlx_bald.load import load_model, save_model_folder
from mlx_bald.spec import CompressionSpec, Quantization, ShortlistHead, SpecError
from mlx_bald.vocab import first_special
from mlx_helpers import random_model, tiny_dims

DIMS = tiny_dims(n_vocab=51865, n_text_ctx=32)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain") / "mlx"
    save_model_folder(random_model(DIMS, seed=2), DIMS, CompressionSpec(), folder)
    return folder


def test_spec_round_trip_and_what_it_refuses():
    spec = CompressionSpec(head=ShortlistHead(rank=32, top=128))
    again = CompressionSpec.from_json(spec.to_json())
    assert again.head == ShortlistHead(32, 128) and not again.is_identity
    with pytest.raises(SpecError, match="full tied embedding"):
        CompressionSpec(head=ShortlistHead(8, 8), embedding_rank=16).validate()
    with pytest.raises(SpecError, match="quantization"):
        CompressionSpec(head=ShortlistHead(8, 8), quantization=Quantization(4)).validate()
    with pytest.raises(SpecError, match="positive"):
        CompressionSpec(head=ShortlistHead(0, 8)).validate()


def test_parse_head_forms():
    assert parse_head("shortlist:16:256") == ShortlistHead(16, 256)
    assert parse_head("shortlist").rank > 0
    for bad in ("svd", "shortlist:16", "shortlist:a:b", "shortlist:0:5"):
        with pytest.raises(ValueError, match="shortlist"):
            parse_head(bad)


def test_factors_are_the_best_low_rank_approximation():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, 24))
    down, up = shortlist_factors(e, 290, 24)
    np.testing.assert_allclose(up @ down, e[:290], atol=1e-9)  # full rank: exact
    down, up = shortlist_factors(e, 290, 6)
    s = np.linalg.svd(e[:290], compute_uv=False)
    assert np.linalg.norm(e[:290] - up @ down) == pytest.approx(np.sqrt((s[6:] ** 2).sum()))


def _hidden(model, seed=0):
    return mx.array(np.random.default_rng(seed).standard_normal((2, 5, DIMS.n_text_state)).astype(np.float32))


def test_head_is_exact_on_its_shortlist_and_on_every_special_token(plain_folder, tmp_path):
    out = add_shortlist_head(plain_folder, tmp_path / "sl", ShortlistHead(rank=8, top=50))
    base, model = load_model(plain_folder), load_model(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["compression"]["head"] == {"rank": 8, "top": 50} and "shortlist" in cfg["compression"]["recipe"]
    h = _hidden(model)
    full = np.array(base.decoder.project_logits(h))
    got = np.array(model.decoder.project_logits(h))
    n_text = first_special(DIMS.n_vocab)
    assert got.shape == full.shape
    np.testing.assert_allclose(got[..., n_text:], full[..., n_text:], atol=1e-4)  # specials, timestamps
    head = model.decoder.head
    preview = np.array(head.preview_up(head.preview_down(h)))
    top = np.argsort(-preview, axis=-1)[..., :50]
    np.testing.assert_allclose(np.take_along_axis(got, top, -1), np.take_along_axis(full, top, -1), atol=1e-4)
    rest = np.ones(preview.shape, bool)
    np.put_along_axis(rest, top, False, -1)
    np.testing.assert_allclose(got[..., :n_text][rest], preview[rest], atol=1e-4)  # the others: previews
    assert not np.allclose(got, full, atol=1e-2)  # rank 8 of 64 really is approximate off the list


def test_full_rank_head_equals_the_full_product(plain_folder, tmp_path):
    out = add_shortlist_head(plain_folder, tmp_path / "sl", ShortlistHead(rank=DIMS.n_text_state, top=16))
    base, model = load_model(plain_folder), load_model(out)
    tokens = mx.array([[50258, 50259, 50359, 400, 1000, 7]])
    features = mx.array(np.random.default_rng(1).standard_normal((1, DIMS.n_audio_ctx, DIMS.n_audio_state)).astype(np.float32))
    np.testing.assert_allclose(np.array(model.decoder(tokens, features)[0]),
                               np.array(base.decoder(tokens, features)[0]), atol=2e-3)


def test_convert_refuses_what_cannot_take_a_head(plain_folder, tmp_path):
    factored = tmp_path / "factored"
    spec = CompressionSpec(embedding_rank=8)
    save_model_folder(random_model(DIMS, spec, seed=1), DIMS, spec, factored)
    with pytest.raises(ModelFormatError, match="factored"):
        add_shortlist_head(factored, tmp_path / "x", ShortlistHead(8, 8))
    with pytest.raises(ModelFormatError, match="R must be"):
        add_shortlist_head(plain_folder, tmp_path / "x", ShortlistHead(DIMS.n_text_state + 1, 8))
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_convert_cli_head_flag(plain_folder, tmp_path, capsys):
    from mlx_bald.cli.main import main

    assert main(["convert", str(plain_folder), "--out", str(tmp_path / "a"), "--head", "shortlist:4:32"]) == 0
    assert load_model(tmp_path / "a").spec.head == ShortlistHead(4, 32)
    assert main(["convert", str(plain_folder), "--out", str(tmp_path / "b"), "--head", "svd"]) == 2
    assert "shortlist:R:N" in capsys.readouterr().err
    assert main(["convert", str(plain_folder), "--out", str(tmp_path / "b"), "--head", "shortlist",
                 "--quantize", "4"]) == 2
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_real_base_with_a_head_and_as_a_draft_gives_bases_hypotheses(tmp_path):
    """Issue #16's done-when: `eval --set librivox` on a shortlist folder made from the model
    name, and with it as the draft of whisper-base, gives base's hypothesis for every clip."""
    from mlx_bald.cli.main import main
    from mlx_bald.evaluate import evaluate

    out = tmp_path / "base-shortlist"
    assert main(["convert", "whisper-base", "--out", str(out), "--head", "shortlist"]) == 0
    base = evaluate("whisper-base", "librivox", progress=False)
    with_head = evaluate(str(out), "librivox", progress=False)
    drafted = evaluate("whisper-base", "librivox", progress=False, draft_model=str(out))
    hyps = [r["hypothesis"] for r in base.rows]
    assert [r["hypothesis"] for r in with_head.rows] == hyps
    assert [r["hypothesis"] for r in drafted.rows] == hyps
    assert drafted.draft["proposed"] > 0 and 0 < drafted.draft["acceptance"] <= 1
