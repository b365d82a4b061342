"""Compressed SHAPES for speed measurements, built in numpy from a real stock MLX folder.

These variants carry UNTRAINED weights (a weighted average of decoder pairs, truncated SVDs):
the right shapes and realistic magnitudes, so they time exactly like a trained model of the
same spec, but they do not transcribe (DATA.md: WER >= 100% without recovery training).
The harness never reports their WER; accuracy comes only from trained folders given to it.

Output folders use the documented MLX folder format (config.json with "compression",
weights.safetensors with the compressed names), so they load through ``mlx_bald.load``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mlx_bald.spec import MLX_CONFIG_KEY, AttentionRank, CompressionSpec, MergeGroup

Weights = dict[str, np.ndarray]

# name -> (merge decoder pairs, embedding rank, product-twin attention rank)
RECIPES: dict[str, tuple[bool, int | None, int | None]] = {
    "merged3": (True, None, None),
    "bald": (True, 96, None),
    "bald+twins32": (True, 96, 32),
}
# quick (CI) mode runs on a small random model: ranks scaled to its width
QUICK_RECIPES: dict[str, tuple[bool, int | None, int | None]] = {
    "merged3": (True, None, None),
    "bald": (True, 16, None),
    "bald+twins32": (True, 16, 8),
}


def read_folder(folder: Path) -> tuple[dict, Weights]:
    """config.json dict and float32 numpy weights (alignment_heads stays int32)."""
    from safetensors.numpy import load_file

    config = json.loads((Path(folder) / "config.json").read_text())
    w = load_file(str(Path(folder) / "weights.safetensors"))
    return config, {k: v if k == "alignment_heads" else v.astype(np.float32) for k, v in w.items()}


def write_folder(config: dict, weights: Weights, out: Path, dtype=np.float16) -> Path:
    """Atomic write of an MLX folder; float tensors stored as ``dtype`` (the stock folders' fp16)."""
    from safetensors.numpy import save_file

    from mlx_bald.fsutil import atomic_dir

    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: np.ascontiguousarray(v if v.dtype.kind == "i" else v.astype(dtype))
                   for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    return out


# ---- the three compressions, on numpy weight dicts ----------------------------------------
def merge_decoder_pairs(w: Weights, config: dict, alpha: float = 0.5) -> tuple[Weights, list[MergeGroup]]:
    """Adjacent decoder layers (0,1), (2,3), ... -> one block each: alpha*lower + (1-alpha)*upper."""
    n = config["n_text_layer"]
    groups = [list(range(i, min(i + 2, n))) for i in range(0, n, 2)]
    out = {k: v for k, v in w.items() if not k.startswith("decoder.blocks.")}
    specs = []
    for g_idx, layers in enumerate(groups):
        coefs = [alpha, 1 - alpha][: len(layers)] if len(layers) == 2 else [1.0]
        prefix = f"decoder.blocks.{layers[0]}."
        for key in [k for k in w if k.startswith(prefix)]:
            leaf = key[len(prefix):]
            out[f"decoder.blocks.{g_idx}.{leaf}"] = sum(
                c * w[f"decoder.blocks.{l}.{leaf}"] for c, l in zip(coefs, layers)) / sum(coefs)
        specs.append(MergeGroup(layers=layers, weights=coefs))
    if "alignment_heads" in w:  # (layer, head) -> (merged block holding that layer, head)
        block_of = {l: g for g, layers in enumerate(groups) for l in layers}
        pairs = sorted({(block_of[int(l)], int(h)) for l, h in w["alignment_heads"]})
        out["alignment_heads"] = np.array(pairs, dtype=np.int32).reshape(-1, 2)
    config["n_text_layer"] = len(groups)
    return out, specs


def factor_embedding(w: Weights, rank: int) -> Weights:
    """Tied embedding E [V, d] -> weight_a [V, r] @ weight_b [r, d] by truncated SVD."""
    e = w.pop("decoder.token_embedding.weight").astype(np.float64)
    # SVD through the d x d Gram matrix: E^T E = V S^2 V^T (V x 51865 is too slow on 2 cores)
    evals, vecs = np.linalg.eigh(e.T @ e)
    top = np.argsort(evals)[::-1][:rank]
    s, v = np.sqrt(np.maximum(evals[top], 0.0)), vecs[:, top]
    root = np.sqrt(s)
    w["decoder.token_embedding.weight_a"] = ((e @ v) / np.maximum(root, 1e-12)).astype(np.float32)
    w["decoder.token_embedding.weight_b"] = (root[:, None] * v.T).astype(np.float32)
    return w


def _split(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """M = a @ b ~= L @ R with L = U_r sqrt(S_r), R = sqrt(S_r) V_r^T (truncated SVD of M).

    M has rank <= a.shape[1] (d_head): QR both factors and take the SVD of the small core."""
    qa, ra = np.linalg.qr(a.astype(np.float64))
    qb, rb = np.linalg.qr(b.T.astype(np.float64))
    u, s, vt = np.linalg.svd(ra @ rb.T)
    root = np.sqrt(s[:rank])
    return (qa @ u[:, :rank]) * root, root[:, None] * (vt[:rank] @ qb.T)


def product_twin(w: Weights, prefix: str, n_head: int, rank: int) -> None:
    """Rank-``rank`` product-twin factorisation of one attention module, in place.

    Per head: M_qk = s [Wq_h^T; bq_h] Wk_h ((d+1) x d) and M_vo = Wv_h^T Wo_h^T (d x d);
    the value bias moves into the out bias (softmax rows sum to 1). Exact at rank = d_head."""
    wq, bq = w[f"{prefix}.query.weight"], w[f"{prefix}.query.bias"]
    wk = w[f"{prefix}.key.weight"]
    wv, bv = w[f"{prefix}.value.weight"], w.pop(f"{prefix}.value.bias")
    wo, bo = w[f"{prefix}.out.weight"], w[f"{prefix}.out.bias"]
    d = wq.shape[1]
    dh = d // n_head
    scale = dh ** -0.5
    q_w, q_b, k_w, v_w, o_w = [], [], [], [], []
    for h in range(n_head):
        sl = slice(h * dh, (h + 1) * dh)
        left, right = _split(scale * np.vstack([wq[sl].T, bq[sl][None]]), wk[sl], rank)
        q_w.append(left[:d].T)
        q_b.append(left[d])
        k_w.append(right)
        left, right = _split(wv[sl].T, wo[:, sl].T, rank)
        v_w.append(left.T)
        o_w.append(right.T)
    w[f"{prefix}.query.weight"] = np.concatenate(q_w)
    w[f"{prefix}.query.bias"] = np.concatenate(q_b)
    w[f"{prefix}.key.weight"] = np.concatenate(k_w)
    w[f"{prefix}.value.weight"] = np.concatenate(v_w)
    w[f"{prefix}.out.weight"] = np.concatenate(o_w, axis=1)
    w[f"{prefix}.out.bias"] = bo + wo @ bv


def attention_modules(config: dict) -> list[tuple[str, int]]:
    """(module path, n_head) of every attention module, encoder and decoder."""
    mods = [(f"encoder.blocks.{i}.attn", config["n_audio_head"]) for i in range(config["n_audio_layer"])]
    for i in range(config["n_text_layer"]):
        mods += [(f"decoder.blocks.{i}.attn", config["n_text_head"]),
                 (f"decoder.blocks.{i}.cross_attn", config["n_text_head"])]
    return mods


# ---- building and caching folders --------------------------------------------------------
def build_variant(base_folder: Path, recipe: tuple[bool, int | None, int | None],
                  out: Path) -> Path:
    """Apply a recipe (merge pairs?, embedding rank, twin rank) to a stock folder; write ``out``."""
    merge, emb_rank, twin_rank = recipe
    config, w = read_folder(base_folder)
    spec = CompressionSpec(recipe=["bench-shape"],
                           notes={"untrained": True, "built_by": "benchmarks/variants.py",
                                  "base": str(base_folder)})
    if merge:
        w, spec.decoder_merge = merge_decoder_pairs(w, config)
    if emb_rank:
        w = factor_embedding(w, emb_rank)
        spec.embedding_rank = emb_rank
    if twin_rank:
        for prefix, n_head in attention_modules(config):
            product_twin(w, prefix, n_head, twin_rank)
            spec.attention[prefix] = AttentionRank(qk_rank=twin_rank, vo_rank=twin_rank)
    spec.validate()
    config = {k: v for k, v in config.items() if k not in (MLX_CONFIG_KEY, "quantization")}
    config[MLX_CONFIG_KEY] = spec.to_dict()
    return write_folder(config, w, out)


def cached_variant(base_folder: Path, name: str, recipe: tuple, root: Path) -> Path:
    """The variant folder under ``root``, built once per (base weights, recipe)."""
    stat = (Path(base_folder) / "weights.safetensors").stat()
    key = hashlib.sha1(json.dumps([str(Path(base_folder).resolve()), stat.st_size,
                                   stat.st_mtime_ns, list(recipe), 1]).encode()).hexdigest()[:10]
    out = root / f"{Path(base_folder).parent.name}-{name.replace('+', '_')}-{key}"
    if not (out / "weights.safetensors").exists():
        build_variant(base_folder, recipe, out)
    return out


def cached_shortlist(folder: Path, head, root: Path) -> Path:
    """``folder`` + a shortlist head (converters/shortlist_head.py) under ``root``, built once."""
    from converters.shortlist_head import add_shortlist_head

    stat = (Path(folder) / "weights.safetensors").stat()
    key = hashlib.sha1(json.dumps([str(Path(folder).resolve()), stat.st_size, stat.st_mtime_ns,
                                   head.rank, head.top]).encode()).hexdigest()[:10]
    stem = Path(folder).parent.name if Path(folder).name == "mlx" else Path(folder).name
    out = root / f"{stem}-shortlist{head.rank}_{head.top}-{key}"
    if not (out / "weights.safetensors").exists():
        add_shortlist_head(folder, out, head)
    return out


QUICK_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                  n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)


def random_stock_folder(out: Path, dims: dict | None = None, seed: int = 0) -> Path:
    """A small random stock (mlx-whisper-loadable) folder for quick mode and tests."""
    from mlx_bald.models.folder import expected_shapes
    from mlx_whisper.whisper import ModelDimensions

    if (out / "weights.safetensors").exists():
        return out
    dims = dims or QUICK_DIMS
    rng = np.random.default_rng(seed)
    w: Weights = {}
    for name, shape in expected_shapes(ModelDimensions(**dims), CompressionSpec()).items():
        if name.endswith(("ln.weight", "ln_post.weight")) or ("_ln." in name and name.endswith("weight")):
            w[name] = np.ones(shape, np.float32)
        elif name.endswith("bias"):
            w[name] = 0.02 * rng.standard_normal(shape).astype(np.float32)
        else:
            w[name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    n_l, n_h = dims["n_text_layer"], dims["n_text_head"]
    w["alignment_heads"] = np.array([[l, h] for l in range(n_l // 2, n_l) for h in range(n_h)], np.int32)
    return write_folder({**dims, "model_type": "whisper"}, w, out)


def spec_of(folder: Path) -> CompressionSpec:
    config = json.loads((Path(folder) / "config.json").read_text())
    return CompressionSpec.from_dict(config.get(MLX_CONFIG_KEY))


def dims_of(folder: Path) -> dict:
    config = json.loads((Path(folder) / "config.json").read_text())
    return {k: config[k] for k in QUICK_DIMS}


__all__ = ["RECIPES", "QUICK_RECIPES", "build_variant", "cached_variant", "cached_shortlist", "random_stock_folder",
           "merge_decoder_pairs", "factor_embedding", "product_twin", "spec_of", "dims_of"]
