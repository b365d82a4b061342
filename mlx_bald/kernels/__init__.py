"""Factored attention (q/k head dim r_qk, v head dim r_vo): a reference path in plain MLX
ops, a Metal kernel and a CUDA kernel behind one function, ``factored_attention``."""
from .dispatch import available_paths, factored_attention, resolve_path, self_check
from .reference import attention_scores, reference_attention

__all__ = ["factored_attention", "reference_attention", "attention_scores",
           "available_paths", "resolve_path", "self_check"]
