"""A (compressed) Whisper in MLX that mlx_whisper's decoding/transcribe can drive.

Built from (ModelDimensions, CompressionSpec); ``dims`` are the model as stored (block
counts after merging/pruning). Interface as mlx-whisper's ``Whisper``: ``encoder``,
``decoder(tokens, audio_features, kv_cache)`` -> (logits, kv_cache, cross_qk), ``logits``,
``forward_with_cross_qk``, ``alignment_heads``, ``detect_language``, ``decode``.

The decoder is built for fast steps: cross-attention K/V are computed once and kept
contiguous per head; self-attention K/V live in preallocated [B, H, n_text_ctx, d] buffers,
so a one-token step has fixed shapes and runs as one ``mx.compile``d function.
"""
from __future__ import annotations

import base64
import gzip
import math
from dataclasses import replace
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_whisper.decoding import detect_language as detect_language_function
from mlx_whisper.whisper import ModelDimensions

from ..decoding import decode as decode_function  # mlx-whisper's, plus beam search
from ..kernels import resolve_path
from .. import vocab
from ..short_context import active_frames
from ..spec import CompressionSpec
from .layers import FactoredEmbedding, ResidualAttentionBlock, ShortlistHead


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> mx.array:
    """Whisper's fixed positional embedding of the encoder."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = mx.exp(-log_increment * mx.arange(channels // 2))
    scaled_time = mx.arange(length)[:, None] * inv_timescales[None, :]
    return mx.concatenate([mx.sin(scaled_time), mx.cos(scaled_time)], axis=1)


def _block_ranks(spec: CompressionSpec, side: str, i: int) -> dict:
    prefix = f"{side}.blocks.{i}"
    ranks = {"attn_rank": spec.attention.get(f"{prefix}.attn"),
             "ffn_rank": spec.ffn.get(f"{prefix}.mlp")}
    if side == "decoder":
        ranks["cross_rank"] = spec.attention.get(f"{prefix}.cross_attn")
    return ranks


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDimensions, spec: CompressionSpec, dtype: mx.Dtype):
        super().__init__()
        n_state = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self._positional_embedding = sinusoids(dims.n_audio_ctx, n_state).astype(dtype)
        self.blocks = [ResidualAttentionBlock(n_state, dims.n_audio_head,
                                              **_block_ranks(spec, "encoder", i))
                       for i in range(dims.n_audio_layer)]
        self.ln_post = nn.LayerNorm(n_state)
        if spec.short_context_registers:
            # [layers, n, d]: the state of n learned positions before each block, used only on a
            # short context (compress/ops/short_context.py: they stand in for the 30 s padding)
            self.short_registers = mx.zeros((dims.n_audio_layer, spec.short_context_registers, n_state), dtype=dtype)

    def __call__(self, mel: mx.array, short: bool = False) -> mx.array:
        """mel [B, 2*n_audio_ctx, n_mels] -> audio features [B, n_audio_ctx, n_audio_state].
        ``short``: a mel of fewer frames is allowed (``mlx_bald.short_context`` decides when);
        a model tuned for it then appends its learned register positions after the speech."""
        frames = None if short else active_frames(self)
        if frames is not None and mel.shape[1] == 2 * self._positional_embedding.shape[0]:
            mel, short = mel[:, :frames], True  # inside short_context.frames_for: a padded clip
        x = nn.gelu(self.conv1(mel))
        x = nn.gelu(self.conv2(x))
        pos = self._positional_embedding
        if short and x.shape[1] <= pos.shape[0]:
            pos = pos[: x.shape[1]]
        if x.shape[1:] != pos.shape:
            raise ValueError(f"mel of {mel.shape[1]} frames gives {x.shape[1]} positions; the "
                             f"encoder expects {self._positional_embedding.shape[0]}")
        x = x + pos
        registers = getattr(self, "short_registers", None) if short else None
        n = 0 if registers is None else registers.shape[1]
        for i, block in enumerate(self.blocks):
            if registers is not None:
                r = mx.broadcast_to(registers[i].astype(x.dtype), (x.shape[0], n, x.shape[2]))
                x = mx.concatenate([x if i == 0 else x[:, :-n], r], axis=1)
            x = block(x)
        return self.ln_post(x)


class DecoderCache(NamedTuple):
    """Decoder state between steps; a tuple tree of mx arrays, so mlx-whisper's
    ``tree_map(lambda x: x[idx], kv_cache)`` reorders it along the batch."""

    self_k: tuple[mx.array, ...]   # per layer [B, H, n_text_ctx, qk_dim], filled up to offset
    self_v: tuple[mx.array, ...]   # per layer [B, H, n_text_ctx, vo_dim]
    cross_k: tuple[mx.array, ...]  # per layer [B, H, n_audio_ctx, qk_dim]
    cross_v: tuple[mx.array, ...]
    filled: mx.array               # [B, offset] of True: the offset, readable without a sync

    @property
    def offset(self) -> int:
        return self.filled.shape[1]


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDimensions, spec: CompressionSpec):
        super().__init__()
        n_state = dims.n_text_state
        self.n_ctx = dims.n_text_ctx
        if spec.embedding_rank:
            self.token_embedding = FactoredEmbedding(dims.n_vocab, n_state, spec.embedding_rank)
        else:
            self.token_embedding = nn.Embedding(dims.n_vocab, n_state)
        self.positional_embedding = mx.zeros((dims.n_text_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, dims.n_text_head, cross_attention=True,
                                              **_block_ranks(spec, "decoder", i))
                       for i in range(dims.n_text_layer)]
        self.ln = nn.LayerNorm(n_state)
        if spec.head is not None:
            self.head = ShortlistHead(n_state, vocab.first_special(dims.n_vocab),
                                      spec.head.rank, spec.head.top)
        self._compiled_step = None
        # On GPUs compiling the one-token step saves many small launches; on the CPU back-end
        # it measured no faster than eager (the step is memory-bound) and costs a g++ run.
        self.compile_step = mx.default_device().type == mx.DeviceType.gpu

    # ---- the cache ------------------------------------------------------------------
    def new_cache(self, xa: mx.array, n_batch: int) -> DecoderCache:
        """Empty self-attention buffers and the cross-attention K/V of ``xa``."""
        cross_k, cross_v, self_k, self_v = [], [], [], []
        for block in self.blocks:
            k, v = block.cross_attn.project_kv(xa)
            if k.shape[0] != n_batch:  # one audio, several sequences: a view, no copy
                k = mx.broadcast_to(k, (n_batch, *k.shape[1:]))
                v = mx.broadcast_to(v, (n_batch, *v.shape[1:]))
            cross_k.append(k)
            cross_v.append(v)
            a = block.attn
            self_k.append(mx.zeros((n_batch, a.n_head, self.n_ctx, a.qk_dim), dtype=k.dtype))
            self_v.append(mx.zeros((n_batch, a.n_head, self.n_ctx, a.vo_dim), dtype=v.dtype))
        return DecoderCache(tuple(self_k), tuple(self_v), tuple(cross_k), tuple(cross_v),
                            mx.ones((n_batch, 0), dtype=mx.bool_))

    # ---- forward ----------------------------------------------------------------------
    def _run(self, tokens: mx.array, offset: mx.array, self_k, self_v, cross_k, cross_v,
             with_qk: bool = False, visible: int | None = None):
        """Tokens at positions offset.. (offset: int32 [1]); pure in its array inputs, so
        the one-token case can be compiled. Returns logits, new self K/V, cross qk.
        ``visible`` (eager one-token steps): attend over only the first ``visible`` cache
        slots instead of all n_text_ctx; the rest are empty anyway."""
        n_tokens = tokens.shape[1]
        positions = offset + mx.arange(n_tokens)
        x = self.token_embedding(tokens) + self.positional_embedding[positions]
        if n_tokens == 1:
            mask, kv_len = None, offset + 1
        else:  # causal over the preallocated buffer: key j visible to query i iff j <= pos_i
            visible = mx.arange(self.n_ctx)[None, :] <= positions[:, None]
            mask, kv_len = mx.where(visible, 0.0, -mx.inf).astype(x.dtype), None
        new_k, new_v, cross_qk = [], [], []
        for i, block in enumerate(self.blocks):
            a = block.attn
            y = block.attn_ln(x)
            k, v = a.project_kv(y)
            keys = mx.slice_update(self_k[i], k, offset, axes=(2,))
            values = mx.slice_update(self_v[i], v, offset, axes=(2,))
            new_k.append(keys)
            new_v.append(values)
            if visible is not None and n_tokens == 1:
                keys, values = keys[:, :, :visible], values[:, :, :visible]
            x = x + a.attend(a.project_q(y), keys, values, mask=mask, kv_len=kv_len)[0]
            c = block.cross_attn
            out, qk = c.attend(c.project_q(block.cross_attn_ln(x)), cross_k[i], cross_v[i],
                               with_qk=with_qk)
            x = x + out
            cross_qk.append(qk)
            x = x + block.mlp(x)
        return self.project_logits(self.ln(x)), tuple(new_k), tuple(new_v), cross_qk

    def project_logits(self, h: mx.array) -> mx.array:
        """Final hidden states -> logits over the vocabulary (tied embedding, or its shortlist head)."""
        if "head" in self:
            return self.head(h, self.token_embedding.weight)
        return self.token_embedding.as_linear(h)

    def _step(self, tokens, offset, self_k, self_v, cross_k, cross_v):
        logits, new_k, new_v, _ = self._run(tokens, offset, self_k, self_v, cross_k, cross_v)
        return logits, new_k, new_v

    def step_function(self):
        """The compiled one-token step (parameters are implicit inputs, so updates count)."""
        if self._compiled_step is None:
            self._compiled_step = mx.compile(self._step, inputs=self.state)
        return self._compiled_step

    def __call__(self, x: mx.array, xa: mx.array, kv_cache: DecoderCache | None = None,
                 return_cross_qk: bool = False, compiled: bool | None = None):
        """x: tokens [B, T]; xa: audio features [B or 1, n_audio_ctx, d] (unused once the
        cache holds the cross K/V). Returns (logits [B, T, V], cache, cross_qk per layer;
        cross_qk entries are None unless ``return_cross_qk``). ``compiled``: run a one-token
        step through ``mx.compile`` (default: ``self.compile_step``)."""
        n_batch, n_tokens = x.shape
        cache = kv_cache if kv_cache is not None else self.new_cache(xa, n_batch)
        start = cache.offset
        if start + n_tokens > self.n_ctx:
            raise ValueError(f"{start + n_tokens} tokens exceed the decoder context {self.n_ctx}")
        offset = mx.array([start], dtype=mx.int32)
        arrays = (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v)
        compiled = self.compile_step if compiled is None else compiled
        if n_tokens == 1 and compiled and not return_cross_qk:
            logits, new_k, new_v = self.step_function()(x, offset, *arrays)
            cross_qk = [None] * len(self.blocks)
        else:
            # read the filled part of the cache only, in buckets of 64 slots (few distinct shapes)
            visible = min(self.n_ctx, -(-(start + 1) // 64) * 64) if n_tokens == 1 else None
            logits, new_k, new_v, cross_qk = self._run(x, offset, *arrays, with_qk=return_cross_qk,
                                                        visible=visible)
        filled = mx.ones((n_batch, start + n_tokens), dtype=mx.bool_)
        return logits, DecoderCache(new_k, new_v, cache.cross_k, cache.cross_v, filled), cross_qk


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions, spec: CompressionSpec | None = None,
                 dtype: mx.Dtype = mx.float32):
        super().__init__()
        self.dims = dims
        self.spec = spec or CompressionSpec()
        resolve_path()  # pick the attention path now (and self-check a GPU kernel), not mid-trace
        self.encoder = AudioEncoder(dims, self.spec, dtype)
        self.decoder = TextDecoder(dims, self.spec)
        # default as openai/mlx-whisper: the last half of the decoder layers, all heads
        heads = np.zeros((dims.n_text_layer, dims.n_text_head), dtype=bool)
        heads[dims.n_text_layer // 2:] = True
        self.alignment_heads = mx.array(np.asarray(heads.nonzero()).T.astype(np.int32))

    def set_alignment_heads(self, dump: bytes | np.ndarray) -> None:
        """(layer, head) pairs as an [n, 2] array, or openai's base85 gzip mask dump."""
        if isinstance(dump, np.ndarray):
            self.alignment_heads = mx.array(dump.astype(np.int32))
        elif isinstance(dump, bytes):
            mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
            mask = mask.reshape(self.dims.n_text_layer, self.dims.n_text_head)
            self.alignment_heads = mx.array(np.asarray(mask.nonzero()).T.astype(np.int32))
        else:
            raise ValueError(f"alignment heads must be an np.ndarray or bytes, got {type(dump)}")

    def embed_audio(self, mel: mx.array) -> mx.array:
        return self.encoder(mel)

    def logits(self, tokens: mx.array, audio_features: mx.array) -> mx.array:
        return self.decoder(tokens, audio_features)[0]

    def forward_with_cross_qk(self, mel: mx.array, tokens: mx.array):
        logits, _, cross_qk = self.decoder(tokens, self.encoder(mel), return_cross_qk=True)
        return logits, cross_qk

    def __call__(self, mel: mx.array, tokens: mx.array) -> mx.array:
        return self.decoder(tokens, self.encoder(mel))[0]

    @property
    def is_multilingual(self) -> bool:
        return vocab.is_multilingual(self.dims.n_vocab)

    @property
    def num_languages(self) -> int:
        return vocab.num_languages(self.dims.n_vocab)

    def detect_language(self, mel: mx.array, tokenizer=None):
        """mlx-whisper's, also for audio features of a short context (its check would encode
        features of fewer than n_audio_ctx positions again)."""
        d = self.dims
        if mel.shape[-1] == d.n_audio_state != d.n_mels and mel.shape[-2] < d.n_audio_ctx:
            return detect_language_function(_ShortView(self, mel.shape[-2]), mel, tokenizer)
        return detect_language_function(self, mel, tokenizer)

    decode = decode_function


class _ShortView:
    """The model as mlx-whisper's language detection sees it: an audio context of ``n`` positions."""

    def __init__(self, model: Whisper, n: int) -> None:
        self._model, self.dims = model, replace(model.dims, n_audio_ctx=n)

    def __getattr__(self, name: str):
        return getattr(self._model, name)
