"""Parameter names: openai / mlx-whisper layout <-> transformers' Whisper layout.

Rules are segment rewrites, so they also carry the compressed layouts through unchanged
(``mlp1.down.weight`` <-> ``fc1.down.weight``, ``token_embedding.weight_a`` <-> ``embed_tokens.weight_a``).
"""
from __future__ import annotations

import re

# (mlx-whisper regex, transformers replacement) applied in order; and the reverse table.
_TO_HF = [
    (r"^encoder\.blocks\.(\d+)\.", r"model.encoder.layers.\1."),
    (r"^decoder\.blocks\.(\d+)\.", r"model.decoder.layers.\1."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
    (r"^encoder\.conv(\d)\.", r"model.encoder.conv\1."),
    (r"^decoder\.token_embedding\.", "model.decoder.embed_tokens."),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^encoder\.short_registers$", "model.encoder.short_registers"),
    (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"\.attn_ln\.", ".self_attn_layer_norm."),
    (r"\.attn\.", ".self_attn."),
    (r"\.mlp_ln\.", ".final_layer_norm."),
    (r"\.mlp1\.", ".fc1."),
    (r"\.mlp2\.", ".fc2."),
    (r"\.query\.", ".q_proj."),
    (r"\.key\.", ".k_proj."),
    (r"\.value\.", ".v_proj."),
    (r"\.out\.", ".out_proj."),
]
_TO_MLX = [
    (r"^model\.encoder\.layers\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^model\.decoder\.layers\.(\d+)\.", r"decoder.blocks.\1."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.encoder\.conv(\d)\.", r"encoder.conv\1."),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.encoder\.short_registers$", "encoder.short_registers"),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.fc1\.", ".mlp1."),
    (r"\.fc2\.", ".mlp2."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
]


def _apply(name: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        name = re.sub(pattern, repl, name)
    return name


def mlx_to_hf(name: str) -> str:
    return _apply(name, _TO_HF)


def hf_to_mlx(name: str) -> str:
    return _apply(name, _TO_MLX)
