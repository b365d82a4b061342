"""Compression in PyTorch (the optional ``[compress]`` extra: torch + transformers).

ops/ (the maths: merge, embedding, twins, prune, whiten; model.py maps a CompressionSpec to
modules and back), train/ (the one training loop, device/precision/ranks, distillation,
layer-wise training, caches), recipes/ (bald, encoder, combine; one run/report/resume
skeleton). The MLX runtime never imports this package.
"""
try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("mlx_bald.compress needs torch and transformers: "
                      "pip install 'mlx-bald[compress]'") from e

from .train.distill import DistillConfig, cache_encoder_outputs, kd_kl_loss, load_cached_encoder_output, train_decoder
from .ops.embedding import (FactoredEmbedding, FactoredLMHead, embedding_distill_loss, factorize_embedding,
                        feature_distill_loss, install_factored_embedding)
from .train.trainer import TrainConfig, train
from .ops.merge import MERGE_FUNCTIONS, adjacent_pairs, merge_decoder, merge_layers, register_merge_function, \
    remap_alignment_heads
from .ops.model import (apply_spec, choose_ffn_ranks, ffn_input_rms, attention_module, build_from_spec, check_matches_spec, count_parameters,
                    expected_parameters, ffn_linears, load_compressed, save_compressed)
from .ops.prune import choose_layers_to_prune, prune_encoder, score_encoder_layers
from .ops.twins import (LowRankLinear, LowRankWhisperAttention, bake_all_lora, choose_rank, collect_input_rms,
                    compress_attention, lora_parameters, lowrank_from_linear, split_rank)

__all__ = [
    "DistillConfig", "cache_encoder_outputs", "kd_kl_loss", "load_cached_encoder_output", "train_decoder",
    "TrainConfig", "train",
    "FactoredEmbedding", "FactoredLMHead", "embedding_distill_loss", "factorize_embedding",
    "feature_distill_loss", "install_factored_embedding", "MERGE_FUNCTIONS", "adjacent_pairs",
    "merge_decoder", "merge_layers", "register_merge_function", "remap_alignment_heads",
    "apply_spec", "choose_ffn_ranks", "ffn_input_rms", "attention_module", "build_from_spec", "check_matches_spec", "count_parameters",
    "expected_parameters", "ffn_linears", "load_compressed", "save_compressed",
    "choose_layers_to_prune", "prune_encoder", "score_encoder_layers", "LowRankLinear",
    "LowRankWhisperAttention", "bake_all_lora", "choose_rank", "collect_input_rms",
    "compress_attention", "lora_parameters", "lowrank_from_linear", "split_rank",
]
