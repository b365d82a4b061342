"""BaldWhisper's low-rank tied token embedding and its feature-distillation loss.

E [V, d] ~= weight_a [V, r] @ weight_b [r, d]. The input lookup is weight_a[ids] @ weight_b;
the tied output head is (h @ weight_b^T) @ weight_a^T, so the V-wide product runs at rank r
and the V x d matrix is never materialised.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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
    def from_weight(cls, weight: torch.Tensor, rank: int, padding_idx: int | None = None) -> "FactoredEmbedding":
        """SVD init: weight_a = U_r sqrt(S_r), weight_b = sqrt(S_r) V_r^T."""
        v, d = weight.shape
        if not 0 < rank <= min(v, d):
            raise ValueError(f"embedding rank {rank} outside 1..{min(v, d)}")
        u, s, vt = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        emb = cls(v, rank, d, padding_idx).to(device=weight.device, dtype=weight.dtype)
        emb.weight_a.copy_((u[:, :rank] * root).to(weight.dtype))
        emb.weight_b.copy_((root[:, None] * vt[:rank]).to(weight.dtype))
        return emb


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


def factorize_embedding(model: nn.Module, rank: int) -> FactoredEmbedding:
    """Replace a stock model's tied embedding with its rank-``rank`` SVD factors (in place)."""
    old = model.model.decoder.embed_tokens
    if isinstance(old, FactoredEmbedding):
        raise ValueError("embedding is already factored")
    emb = FactoredEmbedding.from_weight(old.weight, rank, getattr(old, "padding_idx", None))
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
