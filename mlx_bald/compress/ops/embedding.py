"""BaldWhisper's low-rank tied token embedding and its feature-distillation loss.

E [V, d] ~= weight_a [V, r] @ weight_b [r, d]. The input lookup is weight_a[ids] @ weight_b;
the tied output head is (h @ weight_b^T) @ weight_a^T, so the V-wide product runs at rank r
and the V x d matrix is never materialised.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mlx_bald.compress.ops.whiten import collect_input_moments, unwhiten_right, whitener


class FactoredEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, rank: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.rank, self.embedding_dim = num_embeddings, rank, embedding_dim
        self.padding_idx = padding_idx
        self.weight_a = nn.Parameter(torch.empty(num_embeddings, rank))
        self.weight_b = nn.Parameter(torch.empty(rank, embedding_dim))
        nn.init.normal_(self.weight_a, std=rank**-0.5)
        nn.init.normal_(self.weight_b, std=embedding_dim**-0.5)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, rank={self.rank}, {self.embedding_dim}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_a) @ self.weight_b

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.weight_b.T) @ self.weight_a.T

    def dense_weight(self) -> torch.Tensor:
        """The V x d product (for tests and distillation; not used in forward)."""
        return self.weight_a @ self.weight_b

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, rank: int, padding_idx: int | None = None,
                    stats: "EmbeddingStats | None" = None) -> "FactoredEmbedding":
        """SVD init: weight_a = U_r sqrt(S_r), weight_b = sqrt(S_r) V_r^T. With ``stats``,
        the data-aware version (``EmbeddingStats``): the rank-r subspace is chosen for the
        logits and lookups the model actually makes, not for E's own largest directions."""
        v, d = weight.shape
        if not 0 < rank <= min(v, d):
            raise ValueError(f"embedding rank {rank} outside 1..{min(v, d)}")
        w = weight.double()
        if stats is None:
            u, s, vt = torch.linalg.svd(w, full_matrices=False)
            root = s[:rank].sqrt()
            a, b = u[:, :rank] * root, root[:, None] * vt[:rank]
        else:
            # E_hat = E L P P^T L^-1 with P the top right-singular vectors of diag(sqrt(w)) E L:
            # every row is projected onto one subspace, so rows of weight ~0 are not blown up
            chol = whitener(stats.hidden_moment.to(w.device), stats.ridge)
            scaled = (stats.row_weight.to(w.device).double().sqrt()[:, None] * w) @ chol
            p = torch.linalg.svd(scaled, full_matrices=False)[2][:rank].T
            a, b = w @ chol @ p, unwhiten_right(p.T, chol)
            gain = (b.norm() / a.norm()).sqrt()  # balance the factors' scales for training
            a, b = a * gain, b / gain
        emb = cls(v, rank, d, padding_idx).to(device=weight.device, dtype=weight.dtype)
        emb.weight_a.copy_(a.to(weight.dtype))
        emb.weight_b.copy_(b.to(weight.dtype))
        return emb


@dataclass
class EmbeddingStats:
    """What the data-aware embedding init weighs errors by. The logit error of a row e_i under
    hidden states h is (e_i - e_hat_i) h, so its mean square is whitened by
    ``hidden_moment`` = E[h h^T] (the output head's input); the KL to the teacher weighs row i
    by the teacher's probability of token i, and the input lookup by how often i is fed in:
    ``row_weight`` = mean teacher probability + input frequency + a floor of 1/V."""
    hidden_moment: torch.Tensor  # [d, d]
    row_weight: torch.Tensor  # [V]
    ridge: float = 0.1  # of the mean diagonal: keeps the plain lookup error in the metric too


@torch.no_grad()
def collect_embedding_stats(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> EmbeddingStats:
    """``EmbeddingStats`` of a (dense-embedding) Whisper from teacher-forced decoder passes
    over ``batches`` (dicts with "encoder_hidden_states", "decoder_input_ids", "labels")."""
    head = model.proj_out
    vocab = head.out_features
    prob = torch.zeros(vocab, dtype=torch.float64)
    freq = torch.zeros(vocab, dtype=torch.float64)
    dtype = next(model.parameters()).dtype

    def run() -> None:
        for b in batches:
            logits = model(encoder_outputs=(b["encoder_hidden_states"].to(dtype),),
                           decoder_input_ids=b["decoder_input_ids"], use_cache=False).logits
            mask = b["labels"] != -100
            prob.add_(logits[mask].double().softmax(-1).sum(0))
            freq.add_(torch.bincount(b["decoder_input_ids"][mask], minlength=vocab).double())

    was_training = model.training
    model.eval()
    try:
        moment = collect_input_moments({"head": head}, run)["head"][:-1, :-1]  # no bias: drop [x, 1]'s 1
    finally:
        model.train(was_training)
    if prob.sum() == 0:
        raise ValueError("no label positions in the calibration batches")
    return EmbeddingStats(moment, prob / prob.sum() + freq / freq.sum() + 1.0 / vocab)


class FactoredLMHead(nn.Module):
    """Output projection tied to a FactoredEmbedding. Holds no parameters of its own (the
    embedding is kept outside the module tree so the state dict names it once)."""

    def __init__(self, embedding: FactoredEmbedding):
        super().__init__()
        self._tied = [embedding]  # a list hides it from nn.Module registration

    @property
    def embedding(self) -> FactoredEmbedding:
        return self._tied[0]

    @property
    def out_features(self) -> int:
        return self.embedding.num_embeddings

    @property
    def in_features(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embedding.logits(hidden)


def install_factored_embedding(model: nn.Module, embedding: FactoredEmbedding) -> nn.Module:
    """Put ``embedding`` in a WhisperForConditionalGeneration as decoder.embed_tokens and tie
    proj_out to it. The HF weight tying is switched off (there is no ``.weight`` to tie)."""
    model.model.decoder.embed_tokens = embedding
    model.proj_out = FactoredLMHead(embedding)
    model.config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = {}
    return model


def factorize_embedding(model: nn.Module, rank: int, stats: EmbeddingStats | None = None) -> FactoredEmbedding:
    """Replace a stock model's tied embedding with its rank-``rank`` SVD factors (in place);
    data-aware when ``stats`` (``collect_embedding_stats``) are given."""
    old = model.model.decoder.embed_tokens
    if isinstance(old, FactoredEmbedding):
        raise ValueError("embedding is already factored")
    emb = FactoredEmbedding.from_weight(old.weight, rank, getattr(old, "padding_idx", None), stats)
    install_factored_embedding(model, emb)
    return emb


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """BaldWhisper's feature loss: L1(student, teacher) - log sigmoid(cos(student, teacher)),
    cosine over the last axis, both terms averaged."""
    teacher = teacher.detach()
    l1 = F.l1_loss(student, teacher)
    cos = F.cosine_similarity(student, teacher, dim=-1)
    return l1 - F.logsigmoid(cos).mean()


def embedding_distill_loss(student: FactoredEmbedding, teacher_weight: torch.Tensor,
                           ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Feature loss on the input lookup (rows ``ids``, default all) plus, when decoder
    ``hidden`` states are given, on the output projection (logits of those states)."""
    teacher_weight = teacher_weight.detach()
    if ids is None:
        ids = torch.arange(student.num_embeddings, device=teacher_weight.device)
    loss = feature_distill_loss(student(ids), F.embedding(ids, teacher_weight))
    if hidden is not None:
        loss = loss + feature_distill_loss(student.logits(hidden), hidden.detach() @ teacher_weight.T)
    return loss
