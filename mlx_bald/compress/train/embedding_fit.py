"""Local distillation of the factored embedding, before any end-to-end step.

The low-rank factors E ~= A B serve twice: as the output head (logits h B^T A^T of the final
decoder states h) and as the input lookup (A[id] B). Both uses are local: given the dense
model's own final states and input tokens on the recipe's data, the factors are fitted to
reproduce the dense head's output distribution (KL) and the dense rows that are looked up
(relative squared error), with the decoder frozen and nothing run but the head. This is the
embedding's counterpart of the layer-wise start of the merged decoder.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mlx_bald.compress.ops.embedding import FactoredEmbedding


@dataclass
class HeadData:
    hidden: torch.Tensor  # [N, d] final decoder states at label positions (the head's inputs)
    ids: torch.Tensor  # [M] input token ids at label positions (the lookups made)


@torch.no_grad()
def collect_head_data(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> HeadData:
    """The dense model's head inputs and input tokens, teacher-forced over ``batches``."""
    from mlx_bald.compress.train.forward import decoder_forward

    hidden, ids = [], []
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            mask = b["labels"] != -100
            out, _ = decoder_forward(model, b)
            hidden.append(out[mask.to(out.device)].float().cpu())
            ids.append(b["decoder_input_ids"][mask].cpu())
    finally:
        model.train(was_training)
    if not hidden or not sum(len(h) for h in hidden):
        raise ValueError("no label positions in the calibration batches")
    return HeadData(torch.cat(hidden), torch.cat(ids))


def head_fit_losses(emb: FactoredEmbedding, dense: torch.Tensor, hidden: torch.Tensor,
                    ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """KL(dense head || factored head) on ``hidden`` and the lookups' relative squared error on ``ids``."""
    with torch.no_grad():
        target = F.log_softmax(hidden @ dense.T, -1)
    kl = F.kl_div(F.log_softmax(emb.logits(hidden), -1), target, log_target=True, reduction="batchmean")
    rows = dense[ids]
    lookup = ((emb(ids) - rows) ** 2).sum() / (rows ** 2).sum().clamp_min(1e-12)
    return {"kl": kl, "lookup": lookup}


def fit_factored_embedding(emb: FactoredEmbedding, dense: torch.Tensor, data: HeadData, steps: int = 200,
                           lr: float = 1e-3, batch_tokens: int = 256, lookup_weight: float = 1.0, seed: int = 0,
                           progress: bool = True) -> dict[str, float]:
    """Fit both factors of ``emb`` (in place) to the dense head ``dense`` [V, d] on ``data``
    with Adam (trainer.train); returns the KL and lookup error on all of ``data`` before and after."""
    from mlx_bald.compress.train.trainer import TrainConfig, train

    dense = dense.detach().float()
    gen = torch.Generator().manual_seed(seed)

    def full() -> dict[str, float]:
        with torch.no_grad():
            parts = [head_fit_losses(emb, dense, h, data.ids) for h in data.hidden.split(1024)]
            n = [len(h) for h in data.hidden.split(1024)]
            kl = sum(p["kl"].item() * k for p, k in zip(parts, n)) / sum(n)
            return {"kl": round(kl, 4), "lookup": round(parts[0]["lookup"].item(), 4)}

    before = full()

    def stream(skip: int):
        while True:  # random token batches: nothing to skip on a fresh (checkpoint-less) fit
            pick = torch.randint(len(data.hidden), (min(batch_tokens, len(data.hidden)),), generator=gen)
            ids = data.ids[torch.randint(len(data.ids), (min(batch_tokens, len(data.ids)),), generator=gen)]
            yield data.hidden[pick], ids

    def loss_fn(batch) -> dict[str, torch.Tensor]:
        losses = head_fit_losses(emb, dense, *batch)
        return {"loss": losses["kl"] + lookup_weight * losses["lookup"], **{k: v.detach() for k, v in losses.items()}}

    cfg = TrainConfig(lr=lr, weight_decay=0.0, grad_clip=0.0, seed=seed)
    train({"embedding": emb}, [{"params": [emb.weight_a, emb.weight_b]}], loss_fn, stream, steps, cfg,
          desc="embedding fit", progress=progress)
    after = full()
    return {"kl_before": before["kl"], "lookup_before": before["lookup"], "kl_after": after["kl"],
            "lookup_after": after["lookup"], "steps": steps, "tokens": len(data.hidden)}
