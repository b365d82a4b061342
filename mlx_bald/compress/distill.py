"""Decoder distillation for the BaldWhisper recipe: cached encoder states, CE + KL to a
frozen teacher (learnable temperature) + embedding feature loss, with checkpoint/resume.

Data comes in as plain iterables of dicts (the data package decides where from):
  {"encoder_hidden_states": [B, S, d] float (or "input_features": [B, n_mels, T]),
   "decoder_input_ids": [B, T] long, "labels": [B, T] long with -100 on ignored positions}
Cached encoder states are only valid for a student whose encoder equals the model that
produced them (BaldWhisper leaves the encoder untouched).
"""
from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from .clip_store import Inputs, clip_file, write_missing
from .embedding import FactoredEmbedding, embedding_distill_loss

# ---- encoder-output cache ----------------------------------------------------------------
@torch.no_grad()
def cache_encoder_outputs(model: nn.Module, clips: Iterable[tuple[str, Inputs]], cache_dir: str | os.PathLike,
                          batch_size: int = 8, progress: bool = True) -> int:
    """Run ``model``'s encoder once per clip (``clips`` yields (clip_id, input_features
    [n_mels, T] or a callable returning them)) and store last_hidden_state [S, d] as fp16, one
    safetensors file per clip. Clips already cached are skipped. Returns how many were computed."""
    encoder = model.model.encoder
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype

    def compute(ids: list[str], feats: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        states = encoder(feats.to(device=device, dtype=dtype)).last_hidden_state.to(torch.float16).cpu()
        return [{"encoder_hidden_states": s} for s in states]

    try:
        return write_missing(cache_dir, clips, compute, batch_size, "encoder cache", progress)
    finally:
        encoder.train(was_training)


def load_cached_encoder_output(cache_dir: str | os.PathLike, clip_id: str) -> torch.Tensor:
    path = clip_file(cache_dir, clip_id)
    if not path.is_file():
        raise FileNotFoundError(f"no cached encoder output for {clip_id!r} in {cache_dir}")
    return load_file(str(path))["encoder_hidden_states"]


# ---- losses ---------------------------------------------------------------------------------
class LearnableTemperature(nn.Module):
    """T = exp(log_t), trained with the student."""

    def __init__(self, init: float = 2.0):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> torch.Tensor:
        return self.log_t.exp()


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over unmasked positions."""
    t = torch.as_tensor(temperature, dtype=student_logits.dtype, device=student_logits.device)
    log_p_s = F.log_softmax(student_logits / t, -1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, -1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if mask is None:
        mask = torch.ones_like(kl, dtype=torch.bool)
    return (kl * mask).sum() / mask.sum().clamp_min(1) * t**2


@dataclass
class DistillConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    steps: int = 1000
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    feature_weight: float = 0.1
    init_temperature: float = 2.0
    learn_temperature: bool = True
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0
    # The cross-attention key/value projections see only the frozen encoder's 1,500 frames per
    # clip: training them is most of a step's backward on CPU, so by default they stay frozen.
    train_cross_kv: bool = False
    # Hidden-state matching (general student): student decoder layer s reproduces teacher
    # layer t's output for each (s, t) in hidden_map, e.g. a merged layer the second layer
    # of the pair it replaced. Relative squared error, so the weight is scale-free.
    hidden_weight: float = 0.0
    hidden_map: tuple[tuple[int, int], ...] = ()


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    kw: dict[str, Any] = {"decoder_input_ids": batch["decoder_input_ids"].to(device), "use_cache": False}
    if "encoder_hidden_states" in batch:
        kw["encoder_outputs"] = (batch["encoder_hidden_states"].to(device),)
    else:
        kw["input_features"] = batch["input_features"].to(device)
    return kw


def distill_losses(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], cfg: DistillConfig,
                   temperature: LearnableTemperature | None = None,
                   teacher_embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One batch's losses: {"loss", "ce", "kd", "feature", "hidden"}. The feature term is
    BaldWhisper's embedding loss (input lookup of the batch tokens + output projection of the
    student's final decoder states), used when the student's embedding is factored; the
    hidden term matches decoder layer outputs (``cfg.hidden_map``) on the label positions."""
    device = next(student.parameters()).device
    kw = _model_inputs(batch, device)
    if "encoder_outputs" in kw:
        dt = next(student.parameters()).dtype
        kw["encoder_outputs"] = (kw["encoder_outputs"][0].to(dt),)
    labels = batch["labels"].to(device)
    mask = labels != -100
    t_logits = t_out = None
    match = cfg.hidden_weight > 0 and bool(cfg.hidden_map)
    if cfg.kd_weight > 0 or match:  # a plain fine-tune (no KD) never needs the teacher's forward
        with torch.no_grad():
            t_out = teacher(**kw, output_hidden_states=match)
        t_logits = t_out.logits if cfg.kd_weight > 0 else None
    seen: list[torch.Tensor] = []
    hook = student.proj_out.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        out = student(**kw, output_hidden_states=match)
    finally:
        hook.remove()
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    temp = temperature() if temperature is not None else cfg.init_temperature
    kd = kd_kl_loss(out.logits.float(), t_logits.float(), mask, temp) if t_logits is not None \
        else torch.zeros((), device=device)
    feat = torch.zeros((), device=device)
    emb = student.model.decoder.embed_tokens
    if cfg.feature_weight > 0 and isinstance(emb, FactoredEmbedding) and teacher_embedding is not None:
        hidden = seen[0][mask]  # final decoder states, the output projection's input
        feat = embedding_distill_loss(emb, teacher_embedding.to(device), kw["decoder_input_ids"].unique(), hidden)
    hidden = torch.zeros((), device=device)
    if match:
        hidden = hidden_match_loss(out.decoder_hidden_states, t_out.decoder_hidden_states, cfg.hidden_map, mask)
    loss = cfg.ce_weight * ce + cfg.kd_weight * kd + cfg.feature_weight * feat + cfg.hidden_weight * hidden
    return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "feature": feat.detach(), "hidden": hidden.detach()}


def hidden_match_loss(student_states: tuple[torch.Tensor, ...], teacher_states: tuple[torch.Tensor, ...],
                      pairs: Iterable[tuple[int, int]], mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``pairs`` (student layer s, teacher layer t) of
    ||out_s - out_t||^2 / ||out_t||^2 on the ``mask`` positions. ``*_states`` are transformers'
    ``decoder_hidden_states`` (embeddings first, so layer i's output is entry i + 1; the last
    entry is after the final LayerNorm in both models, so last layers compare like for like)."""
    pairs = list(pairs)
    total = torch.zeros((), device=mask.device)
    for s, t in pairs:
        a, b = student_states[s + 1][mask].float(), teacher_states[t + 1][mask].float().detach()
        total = total + ((a - b) ** 2).sum() / (b ** 2).sum().clamp_min(1e-6)
    return total / max(len(pairs), 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _cycle(make_batches: Callable[[int], Iterable[dict]], skip: int = 0) -> Iterator[tuple[int, dict]]:
    """Endless (epoch, batch) stream that starts after ``skip`` batches: an epoch given as a
    Sequence is skipped by index (nothing built); any other iterable is replayed."""
    epoch = 0
    while True:
        batches = make_batches(epoch)
        if isinstance(batches, Sequence):
            if not len(batches):
                raise ValueError("the batch source yielded nothing")
            start = min(skip, len(batches))
            skip -= start
            for i in range(start, len(batches)):
                yield epoch, batches[i]
        else:
            empty = True
            for b in batches:
                empty = False
                if skip:
                    skip -= 1
                    continue
                yield epoch, b
            if empty:
                raise ValueError("the batch source yielded nothing")
        epoch += 1


def train_decoder(student: nn.Module, teacher: nn.Module, make_batches: Callable[[int], Iterable[dict]],
                  cfg: DistillConfig, out_dir: str | os.PathLike | None = None,
                  trainable: Callable[[str, nn.Parameter], bool] | None = None,
                  progress: bool = True) -> dict[str, float]:
    """Distil ``teacher`` into ``student`` for ``cfg.steps`` steps. ``make_batches(epoch)``
    returns that epoch's batches (shuffle with the epoch as seed for reproducibility).
    Only decoder parameters train by default (``trainable(name, p)`` overrides). With
    ``out_dir``, a checkpoint (student, optimiser, temperature, step) is written every
    ``cfg.checkpoint_every`` steps and at the end, and training resumes from it.
    Returns the mean losses of the last 50 steps."""
    from tqdm.auto import tqdm

    _seed_everything(cfg.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    pick = trainable or (lambda name, p: ".decoder." in f".{name}" and (
        cfg.train_cross_kv or not re.search(r"encoder_attn\.[kv]_proj\.", name)))
    params = []
    for name, p in student.named_parameters():
        p.requires_grad_(bool(pick(name, p)))
        if p.requires_grad:
            params.append(p)
    temperature = LearnableTemperature(cfg.init_temperature).to(next(student.parameters()).device)
    temperature.log_t.requires_grad_(cfg.learn_temperature)
    groups = [{"params": params}]
    if cfg.learn_temperature:
        groups.append({"params": [temperature.log_t], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    teacher_emb = _dense_embedding(teacher)

    ckpt = Path(out_dir) / "distill_checkpoint.pt" if out_dir is not None else None
    step, skip = 0, 0
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        temperature.load_state_dict(state["temperature"])
        step = skip = state["step"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])

    def save() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(),
                    "temperature": temperature.state_dict(), "step": step, "config": asdict(cfg),
                    "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()}, tmp)
        tmp.replace(ckpt)

    student.train()
    recent: list[dict[str, float]] = []
    batches = _cycle(make_batches, skip)  # the same data order as an uninterrupted run
    bar = tqdm(total=cfg.steps, initial=step, desc="distill", disable=not progress)
    while step < cfg.steps:
        _, batch = next(batches)
        losses = distill_losses(student, teacher, batch, cfg, temperature, teacher_emb)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        recent = (recent + [{k: v.item() for k, v in losses.items()} | {"T": temperature().item()}])[-50:]
        bar.update(1)
        bar.set_postfix(loss=f"{recent[-1]['loss']:.3f}", T=f"{recent[-1]['T']:.2f}")
        if ckpt is not None and step % cfg.checkpoint_every == 0:
            save()
    bar.close()
    save()
    student.eval()
    return {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}


def _dense_embedding(model: nn.Module) -> torch.Tensor | None:
    emb = model.model.decoder.embed_tokens
    if isinstance(emb, FactoredEmbedding):
        return emb.dense_weight().detach()
    return emb.weight.detach() if hasattr(emb, "weight") else None
