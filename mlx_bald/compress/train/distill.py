"""Decoder distillation for the BaldWhisper recipe: cached encoder states, CE + KL to a
frozen teacher (learnable temperature) + embedding feature loss, with checkpoint/resume.

Data comes in as plain iterables of dicts (the data package decides where from):
  {"encoder_hidden_states": [B, S, d] float (or "input_features": [B, n_mels, T]),
   "decoder_input_ids": [B, T] long, "labels": [B, T] long with -100 on ignored positions}
(The encoder-state cache is ``clip_store``'s and the decoder's forward pass ``forward``'s, both
re-exported here.) Cached encoder states are only valid for a student whose encoder equals the model that
produced them (BaldWhisper leaves the encoder untouched).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mlx_bald.compress.train.clip_store import cache_encoder_outputs, load_cached_encoder_output  # noqa: F401 (re-exported)
from mlx_bald.compress.ops.embedding import FactoredEmbedding, embedding_distill_loss
from mlx_bald.compress.train.hardware import Shard, rank, shard_batch, world_size
from mlx_bald.compress.train.forward import decoder_forward  # noqa: F401 (also re-exported)
from mlx_bald.compress.train.logit_losses import ce_and_kl
from mlx_bald.compress.train.trainer import TrainConfig, seed_everything, shares, train


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
class DistillConfig(TrainConfig):
    steps: int = 1000
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    feature_weight: float = 0.1
    init_temperature: float = 2.0
    learn_temperature: bool = True
    # The cross-attention key/value projections see only the frozen encoder's 1,500 frames per
    # clip: training them is most of a step's backward on CPU, so by default they stay frozen.
    train_cross_kv: bool = False
    # Hidden-state matching (general student): student decoder layer s reproduces teacher
    # layer t's output for each (s, t) in hidden_map, e.g. a merged layer the second layer
    # of the pair it replaced. Relative squared error, so the weight is scale-free.
    hidden_weight: float = 0.0
    hidden_map: tuple[tuple[int, int], ...] = ()


def distill_losses(student: nn.Module, teacher: nn.Module | None, batch: dict[str, torch.Tensor], cfg: DistillConfig,
                   temperature: LearnableTemperature | None = None,
                   teacher_embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One batch's losses: {"loss", "ce", "kd", "feature", "hidden"}. The feature term is
    BaldWhisper's embedding loss (input lookup of the batch tokens + output projection of the
    student's final decoder states), used when the student's embedding is factored; the
    hidden term matches decoder layer outputs (``cfg.hidden_map``) on the label positions.
    Logits are computed on the label positions only. The teacher runs only when the batch
    carries no cached targets (``teacher_logits``/``teacher_hidden``, targets.py)."""
    device = next(student.parameters()).device
    labels = batch["labels"].to(device)
    mask = labels != -100
    match = cfg.hidden_weight > 0 and bool(cfg.hidden_map)
    cached = "teacher_logits" in batch
    t_logits = t_states = None
    if teacher is None and not cached and (cfg.kd_weight > 0 or match):  # a plain fine-tune needs no teacher
        raise ValueError("distillation needs the teacher, or its cached targets (targets.py)")
    if not cached and (cfg.kd_weight > 0 or match):
        if "cross_kv" in batch:
            raise ValueError("a live teacher needs the batch's encoder states, not the student's cross K/V")
        with torch.no_grad():
            t_hidden, t_states = decoder_forward(teacher, batch, output_hidden_states=match)
            t_logits = teacher.proj_out(t_hidden[mask]) if cfg.kd_weight > 0 else None
    elif cached:
        if cfg.kd_weight > 0:
            t_logits = batch["teacher_logits"].to(device)[mask]
        if match:
            t_states = batch["teacher_hidden"].to(device)
    hidden_out, states = decoder_forward(student, batch, output_hidden_states=match)
    final = hidden_out[mask]
    logits = student.proj_out(final).float()
    temp = temperature() if temperature is not None else cfg.init_temperature
    ce, kd = ce_and_kl(logits, t_logits, labels[mask], temp)  # one fused pass (logit_losses.py)
    feat = torch.zeros((), device=device)
    emb = student.model.decoder.embed_tokens
    if cfg.feature_weight > 0 and isinstance(emb, FactoredEmbedding) and teacher_embedding is not None:
        feat = embedding_distill_loss(emb, teacher_embedding.to(device), batch["decoder_input_ids"].to(device).unique(),
                                      final)
    hidden = torch.zeros((), device=device)
    if match:
        if cached:  # cached states hold only the mapped teacher layers, in hidden_map order of their index
            order = sorted({t for _, t in cfg.hidden_map})
            t_states = {t: t_states[order.index(t)] for t in order}
        else:
            t_states = {t: t_states[t + 1] for _, t in cfg.hidden_map}
        hidden = hidden_match_loss(states, t_states, cfg.hidden_map, mask)
    loss = cfg.ce_weight * ce + cfg.kd_weight * kd + cfg.feature_weight * feat + cfg.hidden_weight * hidden
    return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "feature": feat.detach(), "hidden": hidden.detach()}


def hidden_match_loss(student_states: tuple[torch.Tensor, ...], teacher_states: Mapping[int, torch.Tensor],
                      pairs: Iterable[tuple[int, int]], mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``pairs`` (student layer s, teacher layer t) of
    ||out_s - out_t||^2 / ||out_t||^2 on the ``mask`` positions. ``student_states`` are
    transformers' ``decoder_hidden_states`` (embeddings first, so layer i's output is entry
    i + 1; the last entry is after the final LayerNorm in both models, so last layers compare
    like for like); ``teacher_states[t]`` is teacher layer t's output."""
    pairs = list(pairs)
    total = torch.zeros((), device=mask.device)
    for s, t in pairs:
        a, b = student_states[s + 1][mask].float(), teacher_states[t][mask].float().detach()
        total = total + ((a - b) ** 2).sum() / (b ** 2).sum().clamp_min(1e-6)
    return total / max(len(pairs), 1)


def _cycle(make_batches: Callable[[int], Iterable[dict]], skip: int = 0, shard: Shard = Shard()
           ) -> Iterator[tuple[int, dict]]:
    """Endless (epoch, batch) stream that starts after ``skip`` batches: an epoch given as a
    Sequence is skipped by index (nothing built); any other iterable is replayed. Each batch
    is this rank's share (an epoch that can shard itself collates only this rank's rows)."""
    epoch = 0
    while True:
        batches = make_batches(epoch)
        if shard.world > 1 and hasattr(batches, "shard"):
            batches, cut = batches.shard(shard), (lambda b: b)
        else:
            cut = lambda b: shard_batch(b, shard)  # noqa: E731
        if isinstance(batches, Sequence):
            if not len(batches):
                raise ValueError("the batch source yielded nothing")
            start = min(skip, len(batches))
            skip -= start
            for i in range(start, len(batches)):
                yield epoch, cut(batches[i])
        else:
            empty = True
            for b in batches:
                empty = False
                if skip:
                    skip -= 1
                    continue
                yield epoch, cut(b)
            if empty:
                raise ValueError("the batch source yielded nothing")
        epoch += 1


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """``items``, produced by a background thread up to ``depth`` ahead: a batch is read from
    the caches and collated while the previous step computes (torch releases the GIL)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def train_decoder(student: nn.Module, teacher: nn.Module | None, make_batches: Callable[[int], Iterable[dict]],
                  cfg: DistillConfig, out_dir: str | os.PathLike | None = None,
                  trainable: Callable[[str, nn.Parameter], bool] | None = None,
                  progress: bool = True) -> dict[str, float]:
    """Distil ``teacher`` into ``student`` for ``cfg.steps`` steps, on the device the student
    is on, with trainer.train (precision, accumulation, torchrun ranks, checkpoints).
    ``make_batches(epoch)`` returns that epoch's (global) batches (shuffle with the epoch as
    seed for reproducibility); under torchrun each rank trains on its share of every batch, so
    the result is the one-process result. Only decoder parameters train by default
    (``trainable(name, p)`` overrides). With ``out_dir``, a checkpoint (student, optimiser,
    temperature, step) is written every ``cfg.checkpoint_every`` steps and at the end, and
    training resumes from it. ``teacher`` may be None when the batches carry its cached
    targets. Returns the mean losses of the last 50 steps (of this rank's rows)."""
    seed_everything(cfg.seed)
    device = next(student.parameters()).device
    shard = Shard(rank(), world_size())
    if teacher is not None:
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
    temperature = LearnableTemperature(cfg.init_temperature).to(device)
    temperature.log_t.requires_grad_(cfg.learn_temperature)
    groups = [{"params": params}]
    if cfg.learn_temperature:
        groups.append({"params": [temperature.log_t], "weight_decay": 0.0})
    teacher_emb = _dense_embedding(teacher) if teacher is not None else None

    def stream(skip: int) -> Iterator[dict]:
        batches = (b for _, b in _cycle(make_batches, skip, shard))  # the same order as an uninterrupted run
        # measured on 2 CPU cores: a loader thread slows the step (1.01 vs 1.35 steps/s)
        return _prefetch(batches) if device.type != "cpu" else batches

    def loss_fn(batch: dict) -> dict[str, torch.Tensor]:
        return distill_losses(student, teacher, batch, cfg, temperature, teacher_emb) | {"T": temperature().detach()}

    ckpt = Path(out_dir) / "distill_checkpoint.pt" if out_dir is not None else None
    return train({"student": student, "temperature": temperature}, groups, loss_fn, stream, cfg.steps, cfg, ckpt,
                 desc="distill", progress=progress, weight=lambda b: _token_share(b, shard))


def _token_share(batch: dict, shard: Shard) -> float:
    """This rank's loss weight: its label tokens' share of the global batch's (the averaged
    gradients are then the global batch's per-token mean)."""
    if shard.world == 1:
        return 1.0
    return shares(int((batch["labels"] != -100).sum()), int(batch["global_label_tokens"]), shard.world)


def _dense_embedding(model: nn.Module) -> torch.Tensor | None:
    emb = model.model.decoder.embed_tokens
    if isinstance(emb, FactoredEmbedding):
        return emb.dense_weight().detach()
    return emb.weight.detach() if hasattr(emb, "weight") else None
