"""What a Whisper's vocabulary size says about it (one rule for every stage, torch- and
MLX-free): English-only below 51,865 tokens; otherwise multilingual with n_vocab - 51,765 - 1
languages (99 for tiny..large-v2, 100 for large-v3 and turbo)."""
from __future__ import annotations

from functools import lru_cache


def is_multilingual(n_vocab: int) -> bool:
    return n_vocab >= 51865


def num_languages(n_vocab: int) -> int:
    return n_vocab - 51765 - int(is_multilingual(n_vocab))


def first_special(n_vocab: int) -> int:
    """Id of end-of-text: every id from here on is a special or timestamp token."""
    return 50257 if is_multilingual(n_vocab) else 50256


@lru_cache(maxsize=8)
def tokenizer_for(n_vocab: int, language: str | None = None, task: str | None = None):
    """mlx-whisper's tokenizer (tiktoken; no MLX import) for a model with ``n_vocab`` tokens."""
    from mlx_whisper.tokenizer import get_tokenizer

    multi = is_multilingual(n_vocab)
    return get_tokenizer(multi, num_languages=num_languages(n_vocab), language=language if multi else None,
                         task=task if multi else None)
