"""Decoding of 30 s windows: mlx-whisper's, plus the beam search it lacks.

Beam search follows openai-whisper's semantics: ``beam_size`` live sequences per audio; each
step ranks the top ``beam_size + 1`` continuations of every live sequence by summed log-prob;
sequences that end (end-of-text) are set aside until ``round(beam_size * patience)`` have
finished; the winner is chosen by ``length_penalty`` (None: log-prob / length; alpha: Google
NMT's ((5 + length) / 6) ** alpha). Greedy decoding and sampling (the temperature fallback) run
mlx-whisper's DecodingTask with its filters on the device and one sync per token
(``mlx_bald.device_loop``: same tokens); ``lang_id`` is mlx-whisper's own.

The model runs on the device; only the top-k log-probs of each row come to the host, where the
bookkeeping (``BeamSearch``) is plain numpy, so it is testable without a model.
"""
from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from mlx_whisper.decoding import DecodingOptions, DecodingResult, DecodingTask, compression_ratio
from mlx_whisper.decoding import decode as mlx_whisper_decode

from .device_loop import DeviceDecodingTask, applies, on_device_filters


class BeamSearch:
    """Beam bookkeeping for ``n_audio`` groups of ``beam_size`` consecutive rows."""

    def __init__(self, beam_size: int, eot: int, patience: float | None = None) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, not {beam_size}")
        self.beam_size, self.eot = beam_size, eot
        self.max_candidates = round(beam_size * (1.0 if patience is None else patience))
        if self.max_candidates < 1:
            raise ValueError(f"patience {patience} leaves no candidate to finish")
        self.finished: list[dict[tuple[int, ...], float]] | None = None

    def step(self, tokens: np.ndarray, sum_logprobs: np.ndarray, top_logprobs: np.ndarray,
             top_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], bool]:
        """One step. ``tokens`` [rows, L] and ``sum_logprobs`` [rows] of the live sequences;
        ``top_logprobs``/``top_ids`` [rows, k]: each row's best next tokens. Returns the new live
        tokens [rows, L + 1], their summed log-probs, the row each came from, and whether every
        audio has finished enough sequences."""
        beam = self.beam_size
        n_audio = tokens.shape[0] // beam
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        live, scores, sources = [], [], []
        for i in range(n_audio):
            candidates: dict[tuple[int, ...], tuple[float, int]] = {}
            for row in range(i * beam, (i + 1) * beam):
                prefix = tuple(tokens[row].tolist())
                for lp, t in zip(top_logprobs[row].tolist(), top_ids[row].tolist()):
                    candidates[prefix + (int(t),)] = (float(sum_logprobs[row]) + lp, row)
            ended: dict[tuple[int, ...], float] = {}
            kept = 0
            for seq, (score, row) in sorted(candidates.items(), key=lambda kv: kv[1][0], reverse=True):
                if seq[-1] == self.eot:
                    ended[seq] = score
                    continue
                live.append(seq)
                scores.append(score)
                sources.append(row)
                kept += 1
                if kept == beam:
                    break
            done = self.finished[i]
            for seq in sorted(ended, key=ended.get, reverse=True):
                if len(done) >= self.max_candidates:
                    break
                done[seq] = ended[seq]
        completed = all(len(done) >= self.max_candidates for done in self.finished)
        return np.array(live, dtype=tokens.dtype), np.array(scores), sources, completed

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray
                 ) -> tuple[list[list[tuple[int, ...]]], list[list[float]]]:
        """Per audio, the finished sequences (each ending in end-of-text) and their log-probs;
        an audio with fewer than ``beam_size`` finished ones is topped up with its best live ones."""
        beam = self.beam_size
        finished = self.finished or [{} for _ in range(tokens.shape[0] // beam)]
        for i, done in enumerate(finished):
            rows = range(i * beam, (i + 1) * beam)
            for row in sorted(rows, key=lambda r: sum_logprobs[r], reverse=True):
                if len(done) >= beam:
                    break
                done[tuple(tokens[row].tolist()) + (self.eot,)] = float(sum_logprobs[row])
        return [list(d) for d in finished], [list(d.values()) for d in finished]


class BeamDecodingTask(DecodingTask):
    """mlx-whisper's DecodingTask (prompt, prefix, logit filters, timestamp rules, language
    detection, no-speech probability) with a beam search main loop."""

    def __init__(self, model, options: DecodingOptions) -> None:
        super().__init__(model, replace(options, beam_size=None, patience=None))  # mlx-whisper refuses beams
        self.options = self._verify_options(options)
        self.n_group = options.beam_size
        on_device_filters(self)

    def run(self, mel: mx.array) -> list[DecodingResult]:
        self.inference.reset()
        tokenizer, beam = self.tokenizer, self.n_group
        audio_features = self._get_audio_features(mel)
        n_audio = audio_features.shape[0]
        tokens = mx.broadcast_to(mx.array(self.initial_tokens), (n_audio, len(self.initial_tokens)))
        languages, _ = self._detect_language(audio_features, tokens)
        live = np.repeat(np.array(tokens), beam, axis=0)
        # one audio: the decoder's cache broadcasts its cross K/V over the beams, no copy
        features = audio_features if n_audio == 1 else mx.repeat(audio_features, beam, axis=0)

        search = BeamSearch(beam, tokenizer.eot, self.options.patience)
        sum_logprobs = np.zeros(live.shape[0])
        inputs, no_speech = mx.array(live), [float("nan")] * n_audio
        for step in range(self.sample_len):
            pre_logits = self.inference.logits(inputs, features)
            if step == 0 and tokenizer.no_speech is not None:
                probs = mx.softmax(pre_logits[::beam, self.sot_index], axis=-1)
                no_speech = probs[:, tokenizer.no_speech].tolist()
            logits = pre_logits[:, -1]
            context = mx.array(live)
            for logit_filter in self.logit_filters:
                logits = logit_filter.apply(logits, context)
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            top_ids = mx.argpartition(-logprobs, beam, axis=-1)[:, : beam + 1]
            top = mx.take_along_axis(logprobs, top_ids, axis=-1)
            live, sum_logprobs, sources, completed = search.step(
                live, sum_logprobs, np.array(top), np.array(top_ids))
            if sources != list(range(len(sources))):
                picked = mx.array(sources)
                self.inference.kv_cache = tree_map(lambda x: x[picked], self.inference.kv_cache)
            if completed or live.shape[-1] > self.n_ctx:
                break
            inputs = mx.array(live[:, -1:])

        groups, group_logprobs = search.finalize(live, sum_logprobs)
        groups = [[list(s[self.sample_begin: s.index(tokenizer.eot, self.sample_begin)]) for s in g]
                  for g in groups]
        chosen = self.sequence_ranker.rank(groups, group_logprobs)
        results = []
        for i, pick in enumerate(chosen):
            toks, logprob = groups[i][pick], group_logprobs[i][pick]
            text = tokenizer.decode(toks).strip()
            results.append(DecodingResult(
                audio_features=audio_features[i], language=languages[i], tokens=toks, text=text,
                avg_logprob=logprob / (len(toks) + 1), no_speech_prob=no_speech[i],
                temperature=self.options.temperature, compression_ratio=compression_ratio(text)))
        return results


def decode(model, mel: mx.array, options: DecodingOptions = DecodingOptions(), **kwargs):
    """mlx-whisper's ``decode`` (same signature and results): greedy and sampling through
    ``DeviceDecodingTask`` (one sync per token), beam search when ``beam_size`` is set at
    temperature 0 (host-side bookkeeping), ``lang_id`` through mlx-whisper's own."""
    if kwargs:
        options = replace(options, **kwargs)
    if options.temperature > 0 or options.task == "lang_id":
        options = replace(options, beam_size=None, patience=None)
    if options.task == "lang_id":
        return mlx_whisper_decode(model, mel, options)
    single = mel.ndim == 2
    task = DeviceDecodingTask if applies(options) else BeamDecodingTask
    results = task(model, options).run(mel[None] if single else mel)
    return results[0] if single else results
