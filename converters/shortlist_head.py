"""Add a shortlist head (after SVD-softmax, Shim et al. 2017) to an MLX model folder.

The head previews every text token's logit through the rank-R SVD of the tied embedding's
text rows, E_text = U S V^T: ``down`` = V_R^T [R, d], ``up`` = U_R S_R [n_text, R]. The MLX
module (``mlx_bald.models.layers.ShortlistHead``) rescores the top N previews and every
special/timestamp token with the full rows. No torch and no training: numpy SVD only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mlx_bald.errors import ModelFormatError
from mlx_bald.fsutil import atomic_dir
from mlx_bald.models.folder import CONFIG_FILE, WEIGHTS_FILE, read_config
from mlx_bald.spec import MLX_CONFIG_KEY, ShortlistHead
from mlx_bald.vocab import first_special

# Chosen by measurement (benchmarks/studies/shortlist_study.py, docs/speed-ups.md): the smallest (R, N) of the grid
# with base's greedy transcripts on every clip of LibriVox and asterisk-en:test and the most on
# fillets-cs:test (no (R, N) of the grid matched every Czech clip).
DEFAULT_RANK = 256
DEFAULT_TOP = 4096
EMBEDDING = "decoder.token_embedding.weight"
HEAD_TENSORS = ("decoder.head.preview_down.weight", "decoder.head.preview_up.weight")


def shortlist_factors(embedding: np.ndarray, n_text: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(down [R, d], up [n_text, R]): up @ down is the best rank-R approximation of the text
    rows ``embedding[:n_text]`` (SVD in float64)."""
    u, s, vt = np.linalg.svd(embedding[:n_text].astype(np.float64), full_matrices=False)
    return vt[:rank], u[:, :rank] * s[:rank]


def parse_head(text: str) -> ShortlistHead:
    """``shortlist`` or ``shortlist:R:N`` -> ShortlistHead; ValueError with the form otherwise."""
    parts = text.split(":")
    if parts[0] != "shortlist" or len(parts) not in (1, 3):
        raise ValueError(f"--head {text!r}: expected shortlist or shortlist:R:N (e.g. shortlist:64:64)")
    if len(parts) == 1:
        return ShortlistHead(rank=DEFAULT_RANK, top=DEFAULT_TOP)
    try:
        head = ShortlistHead(rank=int(parts[1]), top=int(parts[2]))
    except ValueError:
        raise ValueError(f"--head {text!r}: R and N must be integers (e.g. shortlist:64:64)") from None
    if head.rank <= 0 or head.top <= 0:
        raise ValueError(f"--head {text!r}: R and N must be positive")
    return head


def add_shortlist_head(src: str | Path, out: str | Path, head: ShortlistHead) -> Path:
    """Write ``src`` (an MLX folder with a full, float token embedding) plus a shortlist head
    to ``out`` (built in a temporary folder, checked, then renamed into place; ``out`` may be
    ``src``). A head already in ``src`` is replaced."""
    from mlx_bald.load import validate_folder

    src, out = Path(src), Path(out)
    dims, spec, quant = read_config(src)
    if spec.embedding_rank:
        raise ModelFormatError(f"{src}: its token embedding is factored (rank {spec.embedding_rank}); "
                               "a shortlist head needs the full embedding")
    if quant is not None:
        raise ModelFormatError(f"{src}: quantized models cannot take a shortlist head (it rescores "
                               "with float embedding rows); add the head to the float model")
    n_text = first_special(dims.n_vocab)
    if head.rank > dims.n_text_state or head.top > n_text:
        raise ModelFormatError(f"shortlist:{head.rank}:{head.top}: R must be <= {dims.n_text_state} "
                               f"(the model width) and N <= {n_text} (its text tokens)")
    try:
        with safe_open(str(src / WEIGHTS_FILE), framework="numpy") as f:
            weights = {k: f.get_tensor(k) for k in f.keys() if k not in HEAD_TENSORS}
    except Exception as e:
        raise ModelFormatError(f"{src / WEIGHTS_FILE}: cannot read tensors ({str(e)[:200]})") from e
    embedding = weights[EMBEDDING]
    down, up = shortlist_factors(embedding, n_text, head.rank)
    weights[HEAD_TENSORS[0]] = down.astype(embedding.dtype)
    weights[HEAD_TENSORS[1]] = up.astype(embedding.dtype)

    config = json.loads((src / CONFIG_FILE).read_text())
    spec.head = head
    if "shortlist" not in spec.recipe:
        spec.recipe.append("shortlist")
    config[MLX_CONFIG_KEY] = spec.to_dict()
    with atomic_dir(out, overwrite=True) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "mlx"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        validate_folder(tmp)
    return out
