"""Short-context tuning (training machinery): the decoder, reading the encoder run on a clip's own
frames plus the registers, learns to write what it writes when the encoder runs on the full 30 s
window (audio-context fine-tuning, as FUTO's whisper-acft: an MSE on every decoder layer's output,
plus the KL of the output distribution). Only the registers train; every other weight is frozen,
so the full-window model is unchanged.

Batches hold clips of one bucket (one mel width), their tokens (teacher-forced), and the cached
full-window encoder states the targets are computed from (once per batch, kept in memory).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mlx_bald.buckets import bucket_frames
from mlx_bald.compress.ops.short_context import encode_short, registers_of
from mlx_bald.compress.train.data import IGNORE, collate_tokens, features, token_rows
from mlx_bald.compress.train.decoder_states import real_positions, suppressed_logits
from mlx_bald.compress.train.local import relative_mse
from mlx_bald.compress.train.trainer import TrainConfig, train
from mlx_bald.data.clips import Clip


@dataclass
class ShortContextConfig(TrainConfig):
    lr: float = 3e-3  # measured: registers need a far larger rate than weights (a few k parameters)
    weight_decay: float = 0.0  # the registers are states, not weights: no pull towards zero
    steps: int = 300
    kl_weight: float = 1.0
    bucket_s: float = 2.0


def short_batches(clips: Sequence[Clip], full_states: Callable[[Clip], torch.Tensor], batch_size: int,
                  bucket_s: float, vocab: int, n_mels: int = 80, seed: int = 0, max_tokens: int = 120) -> list[dict]:
    """Batches of clips of one bucket: ``mel`` [B, n_mels, bucket frames], ``full`` (their
    full-window encoder states, from ``full_states``), ``decoder_input_ids`` and ``labels`` (the
    reference, teacher-forced). Order shuffled by ``seed``; built when used (``LazyBatch``)."""
    by_bucket: dict[int, list[Clip]] = {}
    for c in clips:
        by_bucket.setdefault(bucket_frames(len(c.audio), bucket_s=bucket_s), []).append(c)
    chunks = [(n, group[k:k + batch_size]) for n, group in sorted(by_bucket.items())
              for k in range(0, len(group), batch_size)]
    random.Random(seed).shuffle(chunks)
    return [LazyBatch(n, chunk, full_states, vocab, n_mels, max_tokens) for n, chunk in chunks]


class LazyBatch:
    """One batch, built each time it is used (mels and memory-mapped cached states of a few
    clips: cheap; kept, 102 batches of full-window states held 2.5 GB)."""

    def __init__(self, frames: int, clips: list[Clip], full_states, vocab: int, n_mels: int, max_tokens: int):
        self.frames, self.clips, self._args = frames, clips, (full_states, vocab, n_mels, max_tokens)

    def get(self) -> dict:
        full_states, vocab, n_mels, max_tokens = self._args
        ids, labels = collate_tokens(token_rows(self.clips, vocab=vocab, max_tokens=max_tokens), vocab)
        mel = torch.stack([features(c, n_mels)[:, : self.frames] for c in self.clips])
        return {"mel": mel, "full": torch.stack([full_states(c) for c in self.clips]),
                "decoder_input_ids": ids, "labels": labels}


def _decoder(model: nn.Module, ids: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every decoder layer's output (the last one after the final norm)."""
    out = model.model.decoder(input_ids=ids, encoder_hidden_states=states, output_hidden_states=True)
    return out.hidden_states[1:]


class _Targets:
    """The full-window decoder states of each batch, computed once (the model's decoder is frozen)."""

    def __init__(self, model: nn.Module):
        self.model, self.memo = model, {}

    @torch.no_grad()
    def __call__(self, key: int, batch: dict) -> tuple[torch.Tensor, ...]:
        if key not in self.memo:
            self.memo[key] = _decoder(self.model, batch["decoder_input_ids"], batch["full"])
        return self.memo[key]


def short_losses(model: nn.Module, batch: dict, targets: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Relative MSE of every decoder layer's output (real positions) and the KL of the output
    distribution (label positions), short context against the full window."""
    states = encode_short(model.model.encoder, batch["mel"])
    hidden = _decoder(model, batch["decoder_input_ids"], states)
    keep = real_positions(batch["labels"])
    mse = sum(relative_mse(h[keep], t[keep]) for h, t in zip(hidden, targets)) / len(hidden)
    mask = batch["labels"] != IGNORE
    student = model.proj_out(hidden[-1][mask]).log_softmax(-1)
    teacher = model.proj_out(targets[-1][mask]).log_softmax(-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return {"mse": mse, "kl": kl}


def train_registers(model: nn.Module, batches: Sequence[LazyBatch], cfg: ShortContextConfig,
                    ckpt: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """``cfg.steps`` AdamW steps on the encoder's registers alone, cycling over ``batches``."""
    registers = registers_of(model.model.encoder)
    if registers is None:
        raise ValueError("install the registers first (compress/ops/short_context.install_registers)")
    frozen = [p for p in model.parameters() if p is not registers]
    for p in frozen:
        p.requires_grad_(False)
    targets = _Targets(model)
    holder = nn.Module()  # the checkpoint holds the registers, not the whole model
    holder.registers = registers

    def stream(skip: int) -> Iterator[int]:
        k = skip
        while True:
            yield k % len(batches)
            k += 1

    def loss_fn(key: int) -> dict[str, torch.Tensor]:
        batch = batches[key].get()
        losses = short_losses(model, batch, targets(key, batch))
        return {"loss": losses["mse"] + cfg.kl_weight * losses["kl"], **{k: v.detach() for k, v in losses.items()}}

    try:
        return train({"registers": holder}, [{"params": [registers]}], loss_fn, stream, cfg.steps, cfg, ckpt,
                     desc="short-context registers", progress=progress,
                     meta={"registers": list(registers.shape), "bucket_s": cfg.bucket_s})
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def short_agreement(model: nn.Module, batches: Sequence[LazyBatch], registers: bool = True) -> dict[str, float]:
    """Teacher-forced on the references: % of label positions where the short run's argmax equals
    the full window's, and their KL (nats/token). ``registers=False``: the plain short context
    an untuned model would get."""
    model.eval()
    eot = model.config.eos_token_id
    hits = total = 0
    kl = 0.0
    for lazy in batches:
        batch = lazy.get()
        mask = batch["labels"] != IGNORE
        full = model.proj_out(_decoder(model, batch["decoder_input_ids"], batch["full"])[-1][mask])
        enc = model.model.encoder
        states = encode_short(enc, batch["mel"]) if registers else _plain(enc, batch["mel"])
        short = model.proj_out(_decoder(model, batch["decoder_input_ids"], states)[-1][mask])
        hits += int((suppressed_logits(short, eot).argmax(-1) == suppressed_logits(full, eot).argmax(-1)).sum())
        kl += float(F.kl_div(short.log_softmax(-1), full.log_softmax(-1), log_target=True, reduction="sum"))
        total += int(mask.sum())
    return {"agreement": round(100.0 * hits / max(total, 1), 2), "kl": round(kl / max(total, 1), 4), "tokens": total}


def _plain(encoder: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """The short context without registers (an empty [layers, 0, d] set)."""
    return encode_short(encoder, mel, mel.new_zeros(len(encoder.layers), 0, encoder.config.d_model))
