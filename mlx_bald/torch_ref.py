"""The PyTorch reference engine (transformers' Whisper): transcription of clips up to 30 s
(greedy, or with transformers' temperature fallback), for accuracy comparisons against MLX and
as the compressor's teacher. Needs the [compress] extra; the MLX runtime never imports this module."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# transformers measures the compression ratio on token ids, not on text as openai-whisper's 2.4
# does; 1.35 is the value its generate() documentation recommends for that measure
TORCH_COMPRESSION_RATIO_THRESHOLD = 1.35
LOGPROB_THRESHOLD = -1.0


@lru_cache(maxsize=4)
def load_torch_model(name_or_path: str):
    """A transformers Whisper (stock or mlx-bald compressed) in fp32, eval mode."""
    import json

    import torch
    from transformers.utils import logging as hf_logging

    from mlx_bald.hub import resolve_model
    from mlx_bald.spec import TORCH_CONFIG_KEY

    hf_logging.set_verbosity_error()  # generate() warns about its own Whisper defaults

    folder = resolve_model(name_or_path, "hf")
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if TORCH_CONFIG_KEY in cfg:
        from mlx_bald.compress.ops.model import load_compressed

        model, _ = load_compressed(folder)
    else:
        from transformers import WhisperForConditionalGeneration

        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return model.float().eval()


def transcribe_torch(audio: np.ndarray, model: str = "whisper-base", language: str | None = "en",
                     max_new_tokens: int = 200, fallback: bool = False, seed: int = 0,
                     num_beams: int | None = None) -> str:
    """Greedy transcript of the first 30 s; with ``fallback``, a hypothesis that repeats itself
    (compression ratio) or is unlikely (mean log-prob) is re-decoded by sampling at rising
    temperatures, as Whisper's own transcribe does (seeded, so a run is reproducible)."""
    import torch
    from transformers import WhisperFeatureExtractor
    from mlx_bald.vocab import is_multilingual, tokenizer_for

    m = load_torch_model(str(model))
    fe = WhisperFeatureExtractor(feature_size=m.config.num_mel_bins)
    feats = fe(audio[: 30 * 16000], sampling_rate=16000, return_tensors="pt").input_features
    multilingual = is_multilingual(m.config.vocab_size)
    kwargs = {"language": language, "task": "transcribe"} if multilingual and language else {}
    if fallback:
        torch.manual_seed(seed)
        kwargs |= {"temperature": FALLBACK_TEMPERATURES, "logprob_threshold": LOGPROB_THRESHOLD,
                   "compression_ratio_threshold": TORCH_COMPRESSION_RATIO_THRESHOLD}
    if num_beams:  # transformers' beam search (its own length and stopping rules)
        kwargs["num_beams"] = num_beams
    with torch.no_grad():
        out = m.generate(feats, max_new_tokens=max_new_tokens, **kwargs)
    tok = tokenizer_for(m.config.vocab_size)
    ids = [t for t in out[0].tolist() if t < tok.eot]
    return tok.decode(ids).strip()
