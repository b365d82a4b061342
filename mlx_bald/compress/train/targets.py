"""What stays constant during decoder distillation, computed once instead of at every step.

- Cross-attention K/V. The encoder is frozen, and so are the decoder's cross-attention K/V
  projections (``DistillConfig.train_cross_kv`` is off), so each clip's K/V over its 1,500
  encoder frames never change. They are stored per clip for every decoder layer of the source
  model. A merged layer's projection is the weighted average of its sources' (weights summing
  to 1, bias included), so its K/V are the same mix of theirs: one cache serves the teacher
  fine-tune, every alpha-search trial, the merge and the embedding stage.
- The teacher's targets. The teacher is frozen and teacher-forced on fixed token sequences,
  so its outputs are stored once per clip: its logits in fp32 (the KL stays exact; a top-k
  cache with one "rest" bucket was measured 5x off in KL gradient at the recipe's T = 2, and
  10% off even with the tail tempered exactly) and the layers the hidden-state matching reads.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from mlx_bald.errors import MlxBaldError
from mlx_bald.fsutil import atomic_file

from mlx_bald.compress.train.clip_store import clip_file, load_cached_encoder_output, write_missing
from mlx_bald.compress.train.data import Row
from mlx_bald.compress.train.forward import decoder_forward

def fingerprint(tensors: Sequence[torch.Tensor]) -> str:
    """A short hash of ``tensors`` (a sample of each), naming the weights a cache was made with."""
    h = hashlib.sha1()
    for t in tensors:
        flat = t.detach().flatten()
        h.update(flat[:: max(1, flat.numel() // 4096)].float().numpy().tobytes())
    return h.hexdigest()[:12]


def _mark(folder: Path, meta: dict) -> None:
    """Stamp ``folder`` with what its files were made from; empty it if they were made from other weights."""
    stamp = folder / "meta.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != meta:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(stamp) as tmp:
        tmp.write_text(json.dumps(meta))


# ---- cross-attention K/V ------------------------------------------------------------------
def _cross(model: nn.Module) -> list[nn.Module]:
    return [layer.encoder_attn for layer in model.model.decoder.layers]


def cross_kv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [t for a in _cross(model) for t in (a.k_proj.weight, a.v_proj.weight, a.v_proj.bias)]


@torch.no_grad()
def cache_cross_kv(model: nn.Module, clip_ids: Sequence[str], encoder_state: Callable[[str], torch.Tensor],
                   folder: Path, batch_size: int = 8, progress: bool = True) -> Path:
    """Per clip, fp16 ``k`` and ``v`` [layers, heads, frames, head_dim] of every decoder layer's
    cross-attention over the clip's cached encoder output. Clips already stored are skipped."""
    attn = _cross(model)
    heads, dim = attn[0].num_heads, attn[0].head_dim
    _mark(folder, {"weights": fingerprint(cross_kv_weights(model))})
    frames = model.config.max_source_positions
    dtype = next(model.parameters()).dtype

    def compute(ids: list[str], states: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        states = states.to(dtype)
        b, s, _ = states.shape
        k = torch.stack([a.k_proj(states).view(b, s, heads, dim).transpose(1, 2) for a in attn], 1)
        v = torch.stack([a.v_proj(states).view(b, s, heads, dim).transpose(1, 2) for a in attn], 1)
        return [{"k": k[i].half(), "v": v[i].half()} for i in range(b)]

    write_missing(folder, ((c, lambda c=c: encoder_state(c)) for c in clip_ids), compute, batch_size,
                  "cross-attention K/V cache", progress, bytes_per_clip=2 * len(attn) * frames * heads * dim * 2)
    return folder


@torch.no_grad()
def cross_kv_mix(student: nn.Module, source: nn.Module, atol: float = 1e-5) -> torch.Tensor | None:
    """[student layers, source layers] weights whose mix of the source's cross-attention K/V
    projections equals each student layer's (a merge group's normalised weights, or one source
    layer), or None when some student layer is no such mix (e.g. its K/V projections trained)."""
    src = _cross(source)
    tensors = lambda a: (a.k_proj.weight, a.v_proj.weight, a.v_proj.bias)  # noqa: E731
    rows = []
    for a in _cross(student):
        mine = tensors(a)
        if any(m.shape != s.shape for m, s in zip(mine, tensors(src[0]))):
            return None
        # solve the least-squares mix on the K projection, then check it reproduces all three
        basis = torch.stack([s.k_proj.weight.flatten().double() for s in src], 1)
        w = torch.linalg.lstsq(basis, a.k_proj.weight.flatten().double()[:, None]).solution[:, 0]
        w = torch.where(w.abs() < 1e-6, torch.zeros_like(w), w)
        for m, parts in zip(mine, zip(*(tensors(s) for s in src))):
            mixed = sum(wi * p.double() for wi, p in zip(w.tolist(), parts))
            if not torch.allclose(m.double(), mixed, atol=atol * max(1.0, float(m.abs().max()))):
                return None
        rows.append(w.float())
    return torch.stack(rows)


def cross_kv_batch(folder: Path | Mapping[str, Path], mix: torch.Tensor
                   ) -> Callable[[list[Row], int], dict[str, torch.Tensor]]:
    """A collate extra: the batch's cross-attention K/V for the student, ``cross_kv``
    [2, student layers, B, heads, frames, head_dim] (fp32), mixed from the cached source K/V
    (``folder``: one, or {clip id: folder})."""
    where = (lambda cid: folder[cid]) if isinstance(folder, Mapping) else (lambda cid: folder)  # noqa: E731

    terms = [[(s, w) for s, w in enumerate(row.tolist()) if w != 0.0] for row in mix]

    def extra(rows: list[Row], width: int) -> dict[str, torch.Tensor]:
        files = [load_file(str(clip_file(where(cid), cid))) for cid, _, _ in rows]
        out = torch.empty((2, len(terms), len(rows), *files[0]["k"].shape[1:]), dtype=torch.float32)
        for b, t in enumerate(files):
            for i, name in enumerate(("k", "v")):
                for layer, parts in enumerate(terms):  # a merged layer: the weighted sum of its sources
                    dst = out[i, layer, b]
                    torch.mul(t[name][parts[0][0]], parts[0][1], out=dst)  # fp16 in, fp32 out: one pass
                    for src, w in parts[1:]:
                        dst.add_(t[name][src], alpha=w)
        return {"cross_kv": out}
    return extra


# ---- teacher targets ----------------------------------------------------------------------
@torch.no_grad()
def cache_teacher_targets(teacher: nn.Module, rows: Sequence[Row], make_batch: Callable[[list[Row]], dict],
                          folder: Path, hidden_layers: Sequence[int] = (), batch_size: int = 8,
                          progress: bool = True) -> Path:
    """Per clip: the teacher's ``logits`` [T, vocab] (fp32, so the KL is exact; ~4.8 MB a clip
    of base at the 64-token cap), the token ``ids`` they were made for, and ``hidden`` [len(hidden_layers), T, d] (fp16): the output of each listed decoder
    layer (transformers' decoder_hidden_states[layer + 1]). ``make_batch(rows)`` collates rows
    into the teacher's inputs (a batch as distill takes it)."""

    teacher.eval()
    _mark(folder, {"teacher": fingerprint(list(teacher.parameters())), "hidden_layers": list(hidden_layers),
                   "format": "logits"})
    by_id = {r[0]: r for r in rows}

    def compute(ids: list[str], _unused: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        chunk = [by_id[i] for i in ids]
        final, states = decoder_forward(teacher, make_batch(chunk), output_hidden_states=bool(hidden_layers))
        out = []
        for i, (_, seq, _) in enumerate(chunk):
            t = len(seq) - 1
            item = {"logits": teacher.proj_out(final[i, :t]).float().contiguous(),
                    "ids": torch.tensor(seq, dtype=torch.int32)}
            if hidden_layers:
                item["hidden"] = torch.stack([states[l + 1][i, :t] for l in hidden_layers]).half()
            out.append(item)
        return out

    def stale(cid: str, seq: list[int]) -> bool:  # absent, or made for other tokens (e.g. new labels)
        f = clip_file(folder, cid)
        if not f.is_file():
            return True
        with safe_open(str(f), framework="pt") as st:  # the ids only, not the 4.8 MB of logits
            return st.get_tensor("ids").tolist() != list(seq)

    missing = [cid for cid, seq, _ in rows if stale(cid, seq)]
    for cid in missing:
        clip_file(folder, cid).unlink(missing_ok=True)
    d, vocab = teacher.config.d_model, teacher.config.vocab_size
    mean_t = sum(len(by_id[c][1]) - 1 for c in missing) / max(len(missing), 1)
    write_missing(folder, ((c, torch.zeros(())) for c in missing), compute, batch_size, "teacher targets", progress,
                  bytes_per_clip=int(mean_t * (vocab * 4 + len(hidden_layers) * d * 2)))
    return folder


def teacher_targets_batch(folder: Path) -> Callable[[list[Row], int], dict[str, torch.Tensor]]:
    """A collate extra: the batch's cached teacher targets, padded to the batch width
    (``teacher_logits`` [B, T, vocab] and ``teacher_hidden`` [n, B, T, d] when cached)."""
    def extra(rows: list[Row], width: int) -> dict[str, torch.Tensor]:
        items = []
        for cid, seq, _ in rows:
            t = load_file(str(clip_file(folder, cid)))
            if t["ids"].tolist() != list(seq):
                raise MlxBaldError(f"cached teacher targets of {cid!r} in {folder} were made for other tokens: "
                                   f"remove that folder to rebuild them")
            items.append(t)
        pad = lambda x: F.pad(x, (0, 0, 0, width - x.shape[-2]))  # noqa: E731  (pads the time axis)
        out = {"teacher_logits": torch.stack([pad(t["logits"]) for t in items])}
        if "hidden" in items[0]:
            out["teacher_hidden"] = torch.stack([pad(t["hidden"].float()) for t in items], 1)
        return out
    return extra


# ---- one recipe's constant inputs -----------------------------------------------------------
class Precomputed:
    """Builds (once) and hands out the constant inputs of a recipe's decoder stages: the
    source model's cross-attention K/V of every training clip, and the teacher's targets."""

    def __init__(self, source: nn.Module, encoder_cache_of: Mapping[str, Path], work: Path, progress: bool = True):
        self.source, self.cache_of, self.work, self.progress = source, dict(encoder_cache_of), Path(work), progress
        self._kv: dict[str, Path] | None = None

    def kv_folders(self) -> dict[str, Path]:
        """{clip id: its cross-K/V folder}, one folder beside each encoder-cache folder."""
        if self._kv is None:
            by_folder: dict[Path, list[str]] = {}
            for cid, enc in self.cache_of.items():
                by_folder.setdefault(Path(enc), []).append(cid)
            self._kv = {}
            for enc, ids in by_folder.items():
                kv = cache_cross_kv(self.source, ids, lambda c, enc=enc: load_cached_encoder_output(enc, c),
                                    enc.parent / f"{enc.name}.cross-kv", progress=self.progress)
                self._kv |= {c: kv for c in ids}
        return self._kv

    def cross_kv(self, model: nn.Module) -> Callable[[list[Row], int], dict[str, torch.Tensor]] | None:
        """The batch extra carrying ``model``'s cross-attention K/V, or None when its K/V
        projections are no mix of the source's (then they are computed live)."""
        mix = cross_kv_mix(model, self.source)
        return None if mix is None else cross_kv_batch(self.kv_folders(), mix)

    def extras(self, student: nn.Module, teacher: nn.Module | None, rows: list[Row], name: str,
               hidden_layers: Sequence[int] = ()) -> tuple[list, bool]:
        """(batch extras, whether batches still need encoder states) for training ``student``;
        with a ``teacher``, its targets for ``rows`` are cached under work/teacher-targets/NAME."""
        from mlx_bald.compress.train.data import collate_fn

        extras, live = [], False
        kv = self.cross_kv(student)
        if kv is None:
            live = True
        else:
            extras.append(kv)
        if teacher is not None:
            t_kv = self.cross_kv(teacher)
            make = collate_fn(self.cache_of, [t_kv] if t_kv else [], encoder_states=t_kv is None)
            folder = cache_teacher_targets(teacher, rows, make, self.work / "teacher-targets" / name,
                                           hidden_layers=hidden_layers, progress=self.progress)
            extras.append(teacher_targets_batch(folder))
        return extras, live
