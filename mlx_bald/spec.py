"""CompressionSpec: the one description of a compressed Whisper that travels from the
compressor (torch) through the converter to the MLX loader, stored under the
``"compression"`` key of the model folder's config.json.

Plain dataclasses and JSON only: this module imports neither torch nor mlx.

Indexing conventions (so "where does the alpha of merged layer 2 live?" has one answer):
- ``decoder_merge[i]`` describes decoder block i of the COMPRESSED model: the ORIGINAL
  decoder layer indices it was made from and their merge weights (alpha, beta, ...).
  Empty list = decoder layers unchanged.
- ``encoder_pruned`` lists ORIGINAL encoder layer indices that were removed.
- ``attention`` / ``ffn`` are keyed by module path in the COMPRESSED model, in
  mlx-whisper naming: ``"encoder.blocks.3.attn"``, ``"decoder.blocks.1.cross_attn"``,
  ``"encoder.blocks.0.mlp"``. A module not listed is dense.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Where the spec lives: the MLX folder's config.json, and a compressed transformers checkpoint's.
MLX_CONFIG_KEY = "compression"
TORCH_CONFIG_KEY = "mlx_bald_compression"
QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize takes
QUANT_GROUP_SIZES = (32, 64, 128)  # likewise

SPEC_VERSION = 1


class SpecError(ValueError):
    """A compression spec (or a config.json holding one) is malformed."""


@dataclass
class MergeGroup:
    """One decoder block of the compressed model, made from adjacent original layers."""

    layers: list[int]
    weights: list[float]  # alpha, beta, ... ; theta = sum(w_i theta_i) / sum(w_i)
    method: str = "weighted_average"

    def validate(self) -> None:
        if not self.layers:
            raise SpecError("a merge group needs at least one layer")
        if len(self.weights) != len(self.layers):
            raise SpecError(f"merge group {self.layers}: {len(self.weights)} weights for "
                            f"{len(self.layers)} layers")
        if any(b - a != 1 for a, b in zip(self.layers, self.layers[1:])):
            raise SpecError(f"merge group {self.layers}: layers must be adjacent and ascending")
        if sum(self.weights) <= 0 or any(w < 0 for w in self.weights):
            raise SpecError(f"merge group {self.layers}: weights must be >= 0 with a positive sum")


@dataclass
class AttentionRank:
    """Product-twin low-rank attention: per-head q/k live in ``qk_rank`` dims and v/o in
    ``vo_rank`` dims (effective ranks, LoRA included). Whisper's 1/sqrt(d_head) scaling
    is folded into the query weights, so the runtime scale is 1.0."""

    qk_rank: int
    vo_rank: int
    lora_qk: int = 0  # part of qk_rank that came from LoRA (training bookkeeping)
    lora_vo: int = 0


@dataclass
class FFNRank:
    """Low-rank FFN: fc1 = B1 @ A1 with rank ``fc1_rank``, fc2 likewise. ``None`` = dense."""

    fc1_rank: int | None
    fc2_rank: int | None
    lora: int = 0


@dataclass
class ShortlistHead:
    """Exact-where-it-matters output head (after SVD-softmax): every text token's logit is
    previewed at ``rank`` through the SVD of the tied embedding's text rows; the ``top``
    best previews, and every special and timestamp token, are rescored with the full rows.
    The embedding itself stays full (it also embeds the input tokens)."""

    rank: int
    top: int

    def validate(self) -> None:
        if self.rank <= 0 or self.top <= 0:
            raise SpecError(f"shortlist head: rank and top must be positive, not {self.rank}, {self.top}")


@dataclass
class Quantization:
    bits: int
    group_size: int = 64


@dataclass
class CompressionSpec:
    decoder_merge: list[MergeGroup] = field(default_factory=list)
    embedding_rank: int | None = None
    encoder_pruned: list[int] = field(default_factory=list)
    attention: dict[str, AttentionRank] = field(default_factory=dict)
    ffn: dict[str, FFNRank] = field(default_factory=dict)
    quantization: Quantization | None = None
    head: ShortlistHead | None = None  # None: the tied embedding's full product
    # tuned for a short audio context: clips up to this many seconds may be encoded on their own
    # frames (rounded up to a bucket) instead of a 30 s window; None: full windows only
    short_context_s: float | None = None
    # learned encoder positions appended to a short context (the encoder weight
    # ``short_registers`` [layers, n, d], set before every layer): they stand in for the padding
    # a 30 s window would hold (compress/ops/short_context.py)
    short_context_registers: int = 0
    recipe: list[str] = field(default_factory=list)  # e.g. ["bald", "adaptwin"]
    notes: dict[str, Any] = field(default_factory=dict)  # provenance: teacher, data, seed
    version: int = SPEC_VERSION

    # ---- derived shapes -------------------------------------------------------------
    def n_decoder_layers(self, original: int) -> int:
        return len(self.decoder_merge) if self.decoder_merge else original

    def n_encoder_layers(self, original: int) -> int:
        return original - len(self.encoder_pruned)

    def kept_encoder_layers(self, original: int) -> list[int]:
        return [i for i in range(original) if i not in set(self.encoder_pruned)]

    @property
    def is_identity(self) -> bool:
        return not (self.decoder_merge or self.embedding_rank or self.encoder_pruned
                    or self.attention or self.ffn or self.quantization or self.head
                    or self.short_context_s)

    def validate(self, n_audio_layer: int | None = None, n_text_layer: int | None = None,
                 d_model: int | None = None) -> None:
        for g in self.decoder_merge:
            g.validate()
        if self.decoder_merge:
            covered = [i for g in self.decoder_merge for i in g.layers]
            if covered != sorted(covered) or len(set(covered)) != len(covered):
                raise SpecError(f"decoder_merge groups must cover layers in order, once each: {covered}")
            if n_text_layer is not None and covered != list(range(n_text_layer)):
                raise SpecError(f"decoder_merge covers {covered}, the model has {n_text_layer} layers")
        if n_audio_layer is not None and any(not 0 <= i < n_audio_layer for i in self.encoder_pruned):
            raise SpecError(f"encoder_pruned {self.encoder_pruned} outside 0..{n_audio_layer - 1}")
        if len(set(self.encoder_pruned)) != len(self.encoder_pruned):
            raise SpecError(f"encoder_pruned has repeats: {self.encoder_pruned}")
        if self.embedding_rank is not None and self.embedding_rank <= 0:
            raise SpecError("embedding_rank must be positive")
        for key, a in self.attention.items():
            if not _valid_key(key, ("attn", "cross_attn")):
                raise SpecError(f"bad attention key {key!r}")
            if a.qk_rank <= 0 or a.vo_rank <= 0:
                raise SpecError(f"{key}: ranks must be positive")
        for key, f in self.ffn.items():
            if not _valid_key(key, ("mlp",)):
                raise SpecError(f"bad ffn key {key!r}")
        if self.head is not None:
            self.head.validate()
            if self.embedding_rank:
                raise SpecError("a shortlist head needs the full tied embedding; this spec factors it "
                                f"(embedding_rank {self.embedding_rank})")
            if self.quantization is not None:
                raise SpecError("a shortlist head rescores with the float embedding rows; it cannot "
                                "be combined with quantization")
        if self.short_context_s is not None and not 0 < self.short_context_s <= 30:
            raise SpecError(f"short_context_s must be in (0, 30] seconds, not {self.short_context_s}")
        if self.short_context_registers < 0 or (self.short_context_registers and self.short_context_s is None):
            raise SpecError("short_context_registers must be >= 0, and needs short_context_s")
        if self.quantization is not None and self.quantization.bits not in QUANT_BITS:
            raise SpecError(f"quantization bits {self.quantization.bits} not supported")

    # ---- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "CompressionSpec":
        if not d:
            return cls()
        try:
            version = int(d.get("version", SPEC_VERSION))
            if version > SPEC_VERSION:
                raise SpecError(f"spec version {version} is newer than this mlx-bald ({SPEC_VERSION})")
            q, head = d.get("quantization"), d.get("head")
            return cls(
                decoder_merge=[MergeGroup(**g) for g in d.get("decoder_merge", [])],
                embedding_rank=d.get("embedding_rank"),
                encoder_pruned=list(d.get("encoder_pruned", [])),
                attention={k: AttentionRank(**v) for k, v in d.get("attention", {}).items()},
                ffn={k: FFNRank(**v) for k, v in d.get("ffn", {}).items()},
                quantization=Quantization(**q) if q else None,
                head=ShortlistHead(**head) if head else None,
                short_context_s=d.get("short_context_s"),
                short_context_registers=int(d.get("short_context_registers", 0)),
                recipe=list(d.get("recipe", [])),
                notes=dict(d.get("notes", {})),
                version=version,
            )
        except TypeError as e:  # unknown/missing field in a sub-dict
            raise SpecError(f"malformed compression spec: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "CompressionSpec":
        return cls.from_dict(json.loads(text))


def _valid_key(key: str, leaves: tuple[str, ...]) -> bool:
    parts = key.split(".")
    return (len(parts) == 4 and parts[0] in ("encoder", "decoder") and parts[1] == "blocks"
            and parts[2].isdigit() and parts[3] in leaves
            and not (parts[0] == "encoder" and parts[3] == "cross_attn"))
