"""The benchmark harness: the shape builder is exact where it must be, the cost model counts
what the folders hold, and ``mlx-bald bench --quick`` writes a well-formed JSON, Markdown
table and PNG plot. No timing assertions."""
import json
import struct

import numpy as np
import pytest

from conftest import run_cli


def _attention(x, y, w, prefix, n_head, low_rank):
    """Numpy multi-head attention of x over y with a folder's weights (the runtime's rules:
    scale 1 and no value bias when low-rank)."""
    q = x @ w[f"{prefix}.query.weight"].T + w[f"{prefix}.query.bias"]
    k = y @ w[f"{prefix}.key.weight"].T
    v = y @ w[f"{prefix}.value.weight"].T + (0 if low_rank else w[f"{prefix}.value.bias"])
    dq, dv = q.shape[-1] // n_head, v.shape[-1] // n_head
    scale = 1.0 if low_rank else dq ** -0.5
    outs = []
    for h in range(n_head):
        s = scale * q[:, h * dq:(h + 1) * dq] @ k[:, h * dq:(h + 1) * dq].T
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        outs.append(p @ v[:, h * dv:(h + 1) * dv])
    return np.concatenate(outs, -1) @ w[f"{prefix}.out.weight"].T + w[f"{prefix}.out.bias"]


def _random_attention(rng, d, prefix):
    return {f"{prefix}.query.weight": rng.standard_normal((d, d)) / np.sqrt(d),
            f"{prefix}.query.bias": rng.standard_normal(d),
            f"{prefix}.key.weight": rng.standard_normal((d, d)) / np.sqrt(d),
            f"{prefix}.value.weight": rng.standard_normal((d, d)) / np.sqrt(d),
            f"{prefix}.value.bias": rng.standard_normal(d),
            f"{prefix}.out.weight": rng.standard_normal((d, d)) / np.sqrt(d),
            f"{prefix}.out.bias": rng.standard_normal(d)}


def test_product_twin_is_exact_at_full_rank_and_shrinks_below():
    from benchmarks.variants import product_twin

    rng = np.random.default_rng(0)
    d, n_head, p = 16, 2, "decoder.blocks.0.attn"
    w = _random_attention(rng, d, p)
    x, y = rng.standard_normal((5, d)), rng.standard_normal((7, d))
    ref = _attention(x, y, w, p, n_head, low_rank=False)
    full = dict(w)
    product_twin(full, p, n_head, rank=d // n_head)
    assert f"{p}.value.bias" not in full
    np.testing.assert_allclose(_attention(x, y, full, p, n_head, low_rank=True), ref, atol=1e-9)
    low = dict(w)
    product_twin(low, p, n_head, rank=3)
    assert low[f"{p}.query.weight"].shape == (n_head * 3, d)
    assert low[f"{p}.out.weight"].shape == (d, n_head * 3)
    err = np.abs(_attention(x, y, low, p, n_head, low_rank=True) - ref).max()
    assert 1e-6 < err < np.abs(ref).max()  # an approximation, not a copy, not garbage


def test_factored_embedding_and_merge():
    from benchmarks.variants import factor_embedding, merge_decoder_pairs

    rng = np.random.default_rng(1)
    e = rng.standard_normal((50, 8)).astype(np.float32)
    full = factor_embedding({"decoder.token_embedding.weight": e.copy()}, 8)
    np.testing.assert_allclose(full["decoder.token_embedding.weight_a"] @ full["decoder.token_embedding.weight_b"],
                               e, atol=1e-4)
    low = factor_embedding({"decoder.token_embedding.weight": e.copy()}, 3)
    approx = low["decoder.token_embedding.weight_a"] @ low["decoder.token_embedding.weight_b"]
    s = np.linalg.svd(e, compute_uv=False)
    assert np.linalg.norm(e - approx) == pytest.approx(np.sqrt((s[3:] ** 2).sum()), rel=1e-3)  # Eckart-Young

    w = {f"decoder.blocks.{i}.mlp1.weight": np.full((2, 2), float(i)) for i in range(4)}
    w["alignment_heads"] = np.array([[1, 0], [2, 1], [3, 1]], np.int32)
    config = {"n_text_layer": 4}
    merged, groups = merge_decoder_pairs(w, config, alpha=0.25)
    assert config["n_text_layer"] == 2 and [g.layers for g in groups] == [[0, 1], [2, 3]]
    assert merged["decoder.blocks.1.mlp1.weight"][0, 0] == pytest.approx(0.25 * 2 + 0.75 * 3)
    assert merged["alignment_heads"].tolist() == [[0, 0], [1, 1]]


def test_variant_folder_loads_and_cost_model_counts_its_parameters(tmp_path):
    import mlx.core as mx

    from benchmarks import cost_model
    from benchmarks.variants import QUICK_DIMS, build_variant, dims_of, random_stock_folder, spec_of
    from mlx_bald.load import load_model

    base = random_stock_folder(tmp_path / "base", {**QUICK_DIMS, "n_vocab": 300, "n_audio_ctx": 8,
                                                    "n_text_ctx": 16, "n_mels": 4})
    folder = build_variant(base, (True, 6, 4), tmp_path / "v")
    model = load_model(folder)  # strict: every tensor name and shape as the spec implies
    spec = spec_of(folder)
    assert len(spec.decoder_merge) == 1 and spec.embedding_rank == 6 and spec.notes["untrained"]
    n_params = sum(v.size for k, v in __import__("mlx.utils").utils.tree_flatten(model.parameters())
                   if k != "alignment_heads")
    assert cost_model.cost(dims_of(folder), spec).params == n_params
    c_base = cost_model.cost(dims_of(base))
    assert cost_model.cost(dims_of(folder), spec).decoder_weight_bytes < c_base.decoder_weight_bytes
    fl = cost_model.floors(c_base, "M1")
    assert fl["ceiling_tok_s_b10"] > fl["ceiling_tok_s_b1"] > 0
    logits = model(mx.zeros((1, 16, 4)), mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 300)


@pytest.mark.slow
def test_bench_quick_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "results"
    proc = run_cli("bench", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "bench.json").read_text())
    assert r["schema"] == "mlx-bald-bench/1" and r["quick"] is True
    for key in ("cpu", "cores", "mlx", "mlx_device", "blas"):
        assert r["machine"][key]
    keys = [m["key"] for m in r["models"]]
    assert keys[:5] == ["base", "base+shortlist", "merged3", "bald", "bald+twins32"] and "mlx-whisper base" in keys
    for m in r["models"]:
        assert m["params"] > 0 and m["disk_bytes"] > 0 and m["encoder_ms"] > 0
        for b in r["protocol"]["batches"]:
            assert m["decode"][f"b{b}"]["tok_s"] > 0 and len(m["decode"][f"b{b}"]["runs_s"]) == 1
            assert m["decode"][f"b{b}"]["median_step_ms"] > 0  # MLX engines time each step
        assert m["e2e"]["rtf"] > 0 and 0 < m["e2e"]["encoder_share"] < 1
        assert m["speedup"]["vs base"]["encoder"] > 0
        assert m["cost"]["decode_floor_ms_b1"] > 0
        if m["weights"] == "untrained":
            assert "transcribe" not in m  # never a WER for untrained weights
    assert next(m for m in r["models"] if m["key"] == "base")["speedup"]["vs base"]["b1"] == pytest.approx(1.0)
    # the compressed shapes really are smaller
    params = {m["key"]: m["params"] for m in r["models"]}
    assert params["bald+twins32"] < params["bald"] < params["merged3"] < params["base"]
    # speculative rows: base as target, drafts on a real clip, the target's output unchanged
    spec = r["speculative"]
    assert spec["clips"] == 1 and spec["tokens"] > 0 and len(spec["drafts"]) == 2
    for d in spec["drafts"].values():
        assert d["identical"] is True and d["shares_encoder"] is True and d["tok_s_b1"] > 0
        assert d["acceptance"] is not None and 0 <= d["per_token"] <= 1
        assert d["cost_model"]["draft_over_target"] < 1
    md = (out / "bench.md").read_text()
    assert "QUICK MODE" in md and "| bald (untrained) |" in md and "pareto.png" in md
    assert "## Speculative decoding" in md and "| base + shortlist 16:64 | yes |" in md
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 400 and height > 300

    # --render redraws from the JSON and fills a results page's generated section (full runs only)
    page = tmp_path / "README.md"
    page.write_text("# Page\n\nkept text\n\n<!-- bench:begin -->\nSTALE-TABLE\n<!-- bench:end -->\ntail text\n")
    r["quick"] = False
    (out / "bench.json").write_text(json.dumps(r))
    (out / "bench.md").unlink()
    proc = run_cli("bench", "--render", str(out / "bench.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = page.read_text()
    assert (out / "bench.md").exists() and "STALE-TABLE" not in text
    assert text.startswith("# Page\n\nkept text") and text.rstrip().endswith("tail text")
    assert "### (a) Compression alone" in text and "](results/pareto.png)" in text


@pytest.mark.slow
def test_bench_quick_with_a_trained_folder_reports_its_wer(tmp_path):
    """A folder given with --model is treated as trained: transcribed, WER reported."""
    from benchmarks.variants import QUICK_DIMS, random_stock_folder

    folder = random_stock_folder(tmp_path / "mine", QUICK_DIMS, seed=3)
    out = tmp_path / "results"
    proc = run_cli("bench", "--quick", "--no-mlx-whisper", "--out", str(out), "--model", f"mine={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "bench.json").read_text())
    mine = next(m for m in r["models"] if m["key"] == "trained:mine")
    t = mine["transcribe"]["librivox"]
    assert t["n_clips"] == 1 and t["wer"] >= 0 and t["normalizer"] == "whisper-english"
    assert "| mine (trained) |" in (out / "bench.md").read_text()


def test_cost_model_counts_a_shortlist_head_and_predicts_speculative_decoding(tmp_path):
    from mlx.utils import tree_flatten

    from benchmarks import cost_model
    from benchmarks.variants import QUICK_DIMS, cached_shortlist, dims_of, random_stock_folder, spec_of
    from mlx_bald.load import load_model
    from mlx_bald.spec import ShortlistHead

    base = random_stock_folder(tmp_path / "base", {**QUICK_DIMS, "n_audio_ctx": 8, "n_text_ctx": 16, "n_mels": 4})
    folder = cached_shortlist(base, ShortlistHead(rank=8, top=32), tmp_path)
    assert cached_shortlist(base, ShortlistHead(rank=8, top=32), tmp_path) == folder  # built once
    n_params = sum(v.size for k, v in tree_flatten(load_model(folder).parameters()) if k != "alignment_heads")
    c, c_base = cost_model.cost(dims_of(folder), spec_of(folder)), cost_model.cost(dims_of(base))
    assert c.params == n_params
    assert c.decoder_weight_bytes < c_base.decoder_weight_bytes  # the head reads far less than V x d

    # a perfect free draft gives k + 1 tokens per target pass; a useless one costs its steps
    assert cost_model.speculative_speedup(1.0, 0.0, 4) == pytest.approx(5.0)
    assert cost_model.speculative_speedup(0.0, 0.5, 4) == pytest.approx(1 / 3)
    need_cheap, need_dear = cost_model.acceptance_needed(1.8, 0.1), cost_model.acceptance_needed(1.8, 0.3)
    assert 0 < need_cheap < need_dear < 1
    assert cost_model.best_speedup(need_dear, 0.3)[0] == pytest.approx(1.8, abs=1e-6)
    assert cost_model.acceptance_needed(1.8, 0.9) is None  # a draft that costs 0.9 of a step cannot
