"""Evaluation's decodes: greedy (the papers' tables), beam, and temperature fallback (how
``mlx-bald transcribe`` decodes). The fallback test uses a tiny random multilingual Whisper,
whose greedy hypothesis is so unlikely that every fallback temperature is tried."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlx_bald.errors import MlxBaldError
from mlx_bald.evaluate import evaluate


def test_unknown_decode_is_refused_before_any_work():
    with pytest.raises(MlxBaldError, match="unknown decode 'nucleus'"):
        evaluate("whisper-base", "librivox", engine="torch", decode="nucleus")
    with pytest.raises(MlxBaldError, match="beam_size must be at least 1"):
        evaluate("whisper-base", "librivox", decode="beam", beam_size=0)


@pytest.mark.slow
def test_torch_fallback_redecodes_and_is_reproducible(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from mlx_bald.hub import resolve_model
    from mlx_bald.torch_ref import transcribe_torch

    base = resolve_model("whisper-base", "hf")
    cfg = WhisperConfig.from_pretrained(base)  # base's vocab, mel bins and positions; tiny widths
    cfg.update(dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    WhisperForConditionalGeneration(cfg).save_pretrained(folder)
    shutil.copy(base / "generation_config.json", folder)  # language and task ids for generate()
    audio = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1

    def run(**kw) -> str:
        return transcribe_torch(audio, str(folder), language="en", max_new_tokens=8, **kw)

    greedy, fallback = run(), run(fallback=True)
    assert greedy == run()  # greedy is deterministic
    assert fallback != greedy  # the unlikely greedy hypothesis was re-decoded by sampling
    assert run(fallback=True) == fallback  # seeded: the same re-decode every time
    assert run(fallback=True, seed=1) != fallback
