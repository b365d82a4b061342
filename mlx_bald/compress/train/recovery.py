"""End-to-end recovery of a built (compressed/pruned) encoder, optionally through the frozen
decoder.

``recover_encoder`` trains the kept layers together from the cached first-layer input h0 to
base's encoder output (after the frozen final norm). A plain MSE on the encoder output weighs
every direction of every frame alike, while the decoder reads the output through its
cross-attention only. So, with ``recover_kl``, the ORIGINAL model's
decoder runs teacher-forced on the original model's own greedy transcript of each window
(no labels), once on the original encoder output and once on the compressed one, and the
KL divergence between the two next-token distributions is added to the MSE, so the output
is judged by what the decoder makes of it.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mlx_bald.compress.train.data import IGNORE, collate_tokens, token_sequence
from mlx_bald.compress.train.distill import kd_kl_loss
from mlx_bald.compress.train.greedy import greedy_pseudo_labels
from mlx_bald.compress.train.hardware import main_first
from mlx_bald.compress.train.layer_cache import LayerStack, LayerTrainConfig, relative_output_error, train_layer


class RecoveryRun(Protocol):
    """What recovery reads from the encoder recipe's run (``recipes.encoder.EncoderRun`` is one):
    described here so that the recipe imports this module and not the other way round."""
    o: Any  # the recipe's options: recover_kl, recover_lr, batch_size, seed, grad_accum, log_dir,
    #         lang, train_audio, recover_audio
    base: nn.Module  # the original model (frozen)
    states: Any  # the cached hidden states (layer_cache.HiddenStates)
    train_ids: list[str]
    extra_ids: list[str]
    heldout_ids: list[str]
    heldout_frames: Any
    n: int  # encoder layers
    languages: Mapping[str, str]
    work: Path
    progress: bool


def recover_encoder(run: RecoveryRun, layers: Sequence[nn.Module], final: nn.Module, epochs: int, name: str,
                    mixed: bool = False) -> dict:
    """Train ``layers`` (in place) end to end from h0 to base's encoder output on ``run``'s
    train windows (+ its ``recover_audio`` windows when ``mixed``); the KL term joins when
    ``run.o.recover_kl > 0``. Returns the summary kept in the run's report."""
    o = run.o
    ids = run.train_ids + (run.extra_ids if mixed else [])
    stack, t0 = LayerStack(layers, final), time.time()
    before = relative_output_error(stack, run.states, run.heldout_ids, 0, run.n, frames=run.heldout_frames)
    print(f"[encoder] {name}: recovery, {epochs} epochs end to end; held-out output error {before:.4f} "
          "(speech frames)", file=sys.stderr, flush=True)
    kl = None
    if o.recover_kl > 0:
        norm = run.base.model.encoder.layer_norm
        # base's greedy transcript of each window (up to 224 tokens), made once per work folder
        with main_first():
            texts = greedy_pseudo_labels(run.base, ids, run.languages, lambda c: norm(run.states.load(c, run.n)[0]),
                                         run.work / "window_labels.json", "window pseudo-labels",
                                         max_new_tokens=224, progress=run.progress)
        kl = DecoderKL(run.base, {i: texts[i] for i in ids}, run.languages, o.recover_kl)
    cfg = LayerTrainConfig(lr=o.recover_lr, epochs=epochs, batch_size=o.batch_size, seed=o.seed,
                           accumulate=o.grad_accum, log_dir=o.log_dir)
    s = train_layer(stack, run.states, ids, 0, run.n, cfg, run.work / "recover" / f"{name}.ckpt",
                    desc=f"recover {name}", progress=run.progress, params=stack.trainable_parameters(),
                    target=stack.target, extra_loss=kl, meta={"kl_weight": o.recover_kl, "mixed": mixed})
    after = relative_output_error(stack, run.states, run.heldout_ids, 0, run.n, frames=run.heldout_frames)
    print(f"[encoder] {name}: held-out output error {before:.4f} -> {after:.4f}", file=sys.stderr, flush=True)
    audio = [f"fillets-{o.lang}:train", *o.train_audio] + (list(o.recover_audio) if mixed else [])
    return s | {"epochs": epochs, "lr": o.recover_lr, "kl_weight": o.recover_kl, "seconds": round(time.time() - t0, 1),
                "audio": audio, "windows": len(ids),
                "heldout_speech_output_error_before": before, "heldout_speech_output_error": after}


class DecoderKL:
    """``loss(ids, output, target)`` = weight * T^2 KL(p_decoder(target) || p_decoder(output)),
    averaged over the transcript's tokens: the extra recovery loss for ``train_layer``
    (``output``/``target``: compressed/original encoder outputs [B, T, d], after the final norm)."""

    def __init__(self, model: nn.Module, texts: Mapping[str, str], languages: Mapping[str, str | None],
                 weight: float = 1.0, temperature: float = 1.0, max_tokens: int = 224):
        self.decoder, self.head = model.model.decoder, model.proj_out
        for p in list(self.decoder.parameters()) + list(self.head.parameters()):
            p.requires_grad_(False)
        self.vocab = model.config.vocab_size
        self.seqs = {i: token_sequence(texts[i], languages[i], self.vocab, max_tokens) for i in texts}
        self.weight, self.temperature = weight, temperature

    def _tokens(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = collate_tokens(((i, *self.seqs[i]) for i in ids), self.vocab)
        return inputs, labels != IGNORE

    def _logits(self, inputs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        self.decoder.eval()
        hidden = self.decoder(input_ids=inputs, encoder_hidden_states=states, use_cache=False).last_hidden_state
        return self.head(hidden).float()

    def __call__(self, ids: Sequence[str], output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inputs, mask = (t.to(output.device) for t in self._tokens(ids))
        with torch.no_grad():
            ref = self._logits(inputs, target)[mask]
        return self.weight * kd_kl_loss(self._logits(inputs, output)[mask], ref, temperature=self.temperature)
