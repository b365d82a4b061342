"""Real speech -> training batches for the compression recipes: log-mel features, token
sequences in Whisper's prompt format, cached encoder states, shuffled padded batches."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mlx_bald.data.clips import Clip
from mlx_bald.paths import cache_dir, cache_name
from mlx_bald.vocab import is_multilingual, tokenizer_for

BASE_VOCAB = 51865  # whisper-base's; pass a model's config.vocab_size for any other Whisper

IGNORE = -100


@lru_cache(maxsize=2)
def _feature_extractor(n_mels: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels)


def features(clip: Clip, n_mels: int = 80) -> torch.Tensor:
    """Log-mel of the first 30 s, padded: [n_mels, 3000]."""
    fe = _feature_extractor(n_mels)
    return fe(clip.audio[: 30 * 16000], sampling_rate=16000, return_tensors="pt").input_features[0]


def tokenizer(vocab: int = BASE_VOCAB):
    """The tokenizer of a model with ``vocab`` tokens (the one MLX decodes with)."""
    return tokenizer_for(vocab)


def token_sequence(text: str, language: str | None, vocab: int = BASE_VOCAB,
                   max_tokens: int = 120) -> tuple[list[int], int]:
    """([sot, lang, transcribe, notimestamps] + text + [eot], prompt length) in the tokens of a
    model with ``vocab`` tokens. Long texts are cut so a batch stays small on CPU; a cut text has
    no eot (the model must not learn to stop where the speech goes on)."""
    tok = tokenizer(vocab)
    multilingual = is_multilingual(vocab)
    prompt = list(tok.sot_sequence_including_notimestamps) if multilingual else [tok.sot, tok.no_timestamps]
    if multilingual and language:
        prompt = [tok.sot, tok.to_language_token(language), tok.transcribe, tok.no_timestamps]
    body = tok.encode(" " + text.strip())
    room = max_tokens - len(prompt) - 1
    return prompt + (body + [tok.eot] if len(body) <= room else body[:room + 1]), len(prompt)


def encoder_cache_dir(model_name: str, set_name: str) -> Path:
    return cache_dir() / "encoder-cache" / cache_name(model_name) / cache_name(set_name)


def ensure_encoder_cache(model, model_name: str, set_name: str, clips: list[Clip],
                         progress: bool = True) -> Path:
    """Run the (frozen) encoder once per clip and keep its output on disk (fp16). A clip's
    log-mel is computed only if its output is not cached yet."""
    from mlx_bald.compress.train.clip_store import cache_encoder_outputs

    out = encoder_cache_dir(model_name, set_name)
    n_mels = model.config.num_mel_bins
    cache_encoder_outputs(model, ((c.id, lambda c=c: features(c, n_mels)) for c in clips), out,
                          batch_size=4, progress=progress)
    return out


class EpochBatches(Sequence[dict]):
    """One epoch's batches, each collated (its encoder states loaded) only when indexed, so a
    resumed training run skips the batches before its resume point without building them.
    ``label_tokens(chunk)`` counts a chunk's label tokens, so that ``shard`` can collate only
    one rank's rows and still tell the loss the global batch's count."""

    def __init__(self, chunks: list, make: Callable[[object], dict],
                 label_tokens: Callable[[object], int] | None = None):
        self._chunks, self._make, self._label_tokens = chunks, make, label_tokens

    def __len__(self) -> int:
        return len(self._chunks)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self._make(self._chunks[i])

    def shard(self, shard) -> Sequence[dict]:
        """The same batches, each cut to ``shard``'s rows (hardware.Shard) before collating."""
        if self._label_tokens is None:
            raise TypeError("this epoch cannot count its label tokens; shard collated batches instead")

        def make(chunk):
            return self._make(chunk[shard.rows(len(chunk))]) | {
                "global_label_tokens": torch.tensor(self._label_tokens(chunk))}
        return EpochBatches(self._chunks, make)


Row = tuple[str, list[int], int]  # (clip id, token sequence, prompt length)
# adds tensors to a batch: (the batch's rows, its padded width) -> {name: tensor}
BatchExtra = Callable[[list[Row], int], dict[str, torch.Tensor]]


def token_rows(clips: list[Clip], texts: dict[str, str] | None = None, vocab: int = BASE_VOCAB,
               max_tokens: int = 120) -> list[Row]:
    """Each clip's (id, token sequence, prompt length); ``texts`` overrides the reference per clip id."""
    return [(c.id, *token_sequence((texts or {}).get(c.id, c.text), c.language, vocab, max_tokens))
            for c in clips]


def batches_from_cache(clips: list[Clip], cache: Path | Mapping[str, Path], batch_size: int = 8, seed: int = 0,
                       texts: dict[str, str] | None = None, vocab: int = BASE_VOCAB,
                       max_tokens: int = 120, extras: Sequence[BatchExtra] = (),
                       encoder_states: bool = True) -> Callable[[int], EpochBatches]:
    """``make_batches(epoch)`` for distill.train_decoder: shuffled by (seed, epoch), padded.
    ``texts`` overrides the reference text per clip id (e.g. teacher pseudo-labels).
    ``cache``: one folder, or {clip id: folder} for clips from several sets. ``extras`` add
    precomputed tensors to each batch (targets.py); ``encoder_states=False`` leaves the
    encoder states out (a batch that carries its cross-attention K/V does not read them)."""
    seqs = token_rows(clips, texts, vocab, max_tokens)
    make = collate_fn(cache, extras, encoder_states, vocab)

    def make_batches(epoch: int) -> EpochBatches:
        # Shuffle, then sort by length inside pools of 16 batches, so a batch pads to a
        # similar length (the vocabulary projection runs over every padded position).
        rng = random.Random(seed * 1000 + epoch)
        order = list(range(len(seqs)))
        rng.shuffle(order)
        pool = batch_size * 16
        chunks = []
        for p in range(0, len(order), pool):
            ranked = sorted(order[p:p + pool], key=lambda i: len(seqs[i][1]))
            chunks += [ranked[s:s + batch_size] for s in range(0, len(ranked), batch_size)]
        rng.shuffle(chunks)
        return EpochBatches(chunks, lambda chunk: make([seqs[i] for i in chunk]),
                            lambda chunk: sum(len(seqs[i][1]) - seqs[i][2] for i in chunk))
    return make_batches


def collate_fn(cache: Path | Mapping[str, Path], extras: Sequence[BatchExtra] = (),
               encoder_states: bool = True, vocab: int = BASE_VOCAB) -> Callable[[list[Row]], dict]:
    """rows -> one batch: tokens, labels, (cached encoder states), and each extra's tensors."""
    from mlx_bald.compress.train.clip_store import load_cached_encoder_output

    folder = (lambda cid: cache[cid]) if isinstance(cache, Mapping) else (lambda cid: cache)

    def make(rows: list[Row]) -> dict:
        if encoder_states:
            batch = collate(rows, lambda cid: load_cached_encoder_output(folder(cid), cid), vocab)
        else:
            inputs, labels = collate_tokens(rows, vocab)
            batch = {"decoder_input_ids": inputs, "labels": labels}
        for extra in extras:
            batch |= extra(rows, batch["decoder_input_ids"].shape[1])
        return batch
    return make


def collate_tokens(chunk: Iterable[tuple[str, list[int], int]], vocab: int = BASE_VOCAB
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder_input_ids, labels) [B, T] of (id, token sequence, prompt length) rows: padded
    with eot, labels shifted by one, the prompt's language/task tokens ignored."""
    chunk = list(chunk)
    eot = tokenizer(vocab).eot
    width = max(len(ids) for _, ids, _ in chunk) - 1
    inputs = torch.full((len(chunk), width), eot, dtype=torch.long)
    labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
    for row, (_, ids, n_prompt) in enumerate(chunk):
        t = torch.tensor(ids)
        inputs[row, : len(ids) - 1] = t[:-1]
        labels[row, : len(ids) - 1] = t[1:]
        labels[row, : n_prompt - 1] = IGNORE  # language/task/notimestamps are given, not learned
    return inputs, labels


def collate(chunk: Iterable[tuple[str, list[int], int]], encoder_state: Callable[[str], torch.Tensor],
            vocab: int = BASE_VOCAB) -> dict:
    chunk = list(chunk)
    inputs, labels = collate_tokens(chunk, vocab)
    states = torch.stack([encoder_state(cid) for cid, _, _ in chunk])
    return {"encoder_hidden_states": states, "decoder_input_ids": inputs, "labels": labels}


def as_numpy_features(clip: Clip) -> np.ndarray:
    return features(clip).numpy()


def subset(clips: list[Clip], n: int | None, seed: int = 0) -> list[Clip]:
    """A fixed random subset (the same for every run with the same seed); all when n is None."""
    if n is None or n >= len(clips):
        return list(clips)
    shuffled = list(clips)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:n]


def counted(entry: str, default: int | None) -> tuple[str, int | None]:
    """An audio-set entry of the recipes: ``SPEC@N`` -> (SPEC, N clips), ``SPEC@all`` ->
    (SPEC, None = every clip), ``SPEC`` -> (SPEC, default)."""
    spec, at, count = entry.rpartition("@")
    if not at or not (count.isdigit() or count == "all"):
        return entry, default
    return spec, None if count == "all" else int(count)


def set_subset(name: str, n: int | None, seed: int = 0) -> list[Clip]:
    """``subset`` of the set ``name`` with each clip id prefixed by the set's cache key, so clips
    of several sets can share one id space (fillets languages share level/line ids)."""
    from dataclasses import replace

    from mlx_bald.data import cache_key, load_set

    return [replace(c, id=f"{cache_key(name)}/{c.id}") for c in subset(load_set(name), n, seed)]
