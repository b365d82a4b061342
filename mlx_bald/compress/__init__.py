"""Compression in PyTorch (the optional ``[compress]`` extra: torch + transformers).

merge (decoder layer merging), embedding (low-rank tied embedding), twins (product-twin
attention, low-rank FFN, LoRA), prune (encoder layers), model (spec <-> transformers model,
compressed checkpoints), distill (BaldWhisper decoder distillation, encoder-output cache),
layer_cache (AdaPTwin layer-wise training on cached hidden states), trainer (the one training
loop), hardware (device, precision, torchrun ranks). The MLX runtime never imports this package.
"""
try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("mlx_bald.compress needs torch and transformers: "
                      "pip install 'mlx-bald[compress]'") from e

from .distill import DistillConfig, cache_encoder_outputs, kd_kl_loss, load_cached_encoder_output, train_decoder
from .embedding import (FactoredEmbedding, FactoredLMHead, embedding_distill_loss, factorize_embedding,
                        feature_distill_loss, install_factored_embedding)
from .trainer import TrainConfig, train
from .merge import MERGE_FUNCTIONS, adjacent_pairs, merge_decoder, merge_layers, register_merge_function, \
    remap_alignment_heads
from .model import (apply_spec, choose_ffn_ranks, ffn_input_rms, attention_module, build_from_spec, check_matches_spec, count_parameters,
                    expected_parameters, ffn_linears, load_compressed, save_compressed)
from .prune import choose_layers_to_prune, prune_encoder, score_encoder_layers
from .twins import (LowRankLinear, LowRankWhisperAttention, bake_all_lora, choose_rank, collect_input_rms,
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
