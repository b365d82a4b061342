"""Greedy and sampled decoding with one host sync per token.

mlx-whisper's ``DecodingTask`` (prompt, prefix, language detection, no-speech probability,
best-of-N ranking, results) with two things changed:

- its logit filters (``SuppressBlank``, ``SuppressTokens``, ``ApplyTimestampRules``) become one
  filter of MLX operations on the device (``DeviceFilters``): the timestamp rules read the last
  two tokens as lazy arrays instead of copying every sequence to the host each step;
- the per-token loop (``DeviceDecodingTask._main_loop``) starts each step on the device, builds
  the next step's graph while it runs, and then reads ``completed``: the one sync per token. The
  next step is only run if decoding goes on (mlx-whisper's loop runs one step past the end).

Tokens, log-probs and random draws are mlx-whisper's own (same operations, in the same order):
tests check token for token. Not covered, so left to the host-side path
(``mlx_bald.decoding``): beam search, ``lang_id``, and any logit filter of unknown kind.
"""
from __future__ import annotations

from functools import partial

import mlx.core as mx
from mlx_whisper.decoding import (ApplyTimestampRules, DecodingOptions, DecodingTask, LogitFilter,
                                  SuppressBlank, SuppressTokens)



def _compile_default() -> bool:
    """Compile the filter and overlap the next step's graph building with the current step where
    kernels are launched one by one (Metal/CUDA). On the CPU compiling costs a g++ run and
    measured no faster, and a synchronous eval measured faster than async_eval's thread hand-off
    (benchmarks/README.md, Latency)."""
    return mx.metal.is_available() or mx.cuda.is_available()


class DeviceFilters(LogitFilter):
    """mlx-whisper's suppression and timestamp filters as one function of MLX operations.

    Its ``ApplyTimestampRules`` (0.4.3) forbids timestamps below the last one by slicing the
    vocabulary at a *position* in the sequence, which is always below the first timestamp id:
    the rule has no effect, so it is left out here (same tokens)."""

    def __init__(self, n_vocab: int, sample_begin: int, always: mx.array, first: mx.array,
                 rules: ApplyTimestampRules | None, compile: bool | None = None) -> None:
        self.sample_begin = sample_begin
        self.always, self.first = always, first  # [V] bool: suppressed at every step / the first
        self.rules = rules is not None
        if rules is not None:
            tok = rules.tokenizer
            ids = mx.arange(n_vocab)
            self.tb = tok.timestamp_begin
            self.is_text = ids < self.tb
            static = mx.zeros(n_vocab, dtype=mx.bool_)
            if tok.no_timestamps is not None:
                static = static | (ids == tok.no_timestamps)
            # after a timestamp pair: text only; after a lone timestamp: a timestamp or eot
            self.after_pair, self.after_one = static | (ids >= self.tb), static | (ids < tok.eot)
            self.ts_static = static
            begin = static | self.is_text  # the first sampled token is a timestamp...
            if rules.max_initial_timestamp_index is not None:  # ...no later than this one
                begin = begin | (ids > self.tb + rules.max_initial_timestamp_index)
            self.ts_begin = begin
        use = _compile_default() if compile is None else compile
        self._fns = {n: (mx.compile(partial(self._filter, n)) if use else partial(self._filter, n))
                     for n in (0, 1, 2)}

    @classmethod
    def from_task(cls, task: DecodingTask, compile: bool | None = None) -> "DeviceFilters | None":
        """The task's filters on the device; None if it has one this class does not know."""
        n_vocab = task.model.dims.n_vocab
        always = first = mx.zeros(n_vocab, dtype=mx.bool_)
        rules = None
        for f in task.logit_filters:
            if isinstance(f, SuppressBlank):
                first = first | (f.mask == -mx.inf)
            elif isinstance(f, SuppressTokens):
                always = always | (f.mask == -mx.inf)
            elif isinstance(f, ApplyTimestampRules) and rules is None:
                rules = f
            else:
                return None
        return cls(n_vocab, task.sample_begin, always, always | first, rules, compile)

    def _filter(self, n_sampled: int, logits: mx.array, last: mx.array, penult: mx.array) -> mx.array:
        """``n_sampled``: 0, 1 or 2 (two or more) tokens sampled so far; ``last``/``penult``
        [B, 1]: the last two tokens (ignored where fewer were sampled)."""
        x = mx.where(self.first if n_sampled == 0 else self.always, -mx.inf, logits)
        if not self.rules:
            return x
        if n_sampled == 0:
            forbid = self.ts_begin
        else:  # timestamps come in pairs, except directly before end-of-text
            last_ts = last >= self.tb
            pen_ts = True if n_sampled == 1 else penult >= self.tb
            forbid = mx.where(last_ts, mx.where(pen_ts, self.after_pair, self.after_one), self.ts_static)
        logprobs = x - mx.logsumexp(x, axis=-1, keepdims=True)
        ts_logprob = logprobs[:, self.tb:].logsumexp(axis=-1, keepdims=True)
        max_text = logprobs[:, : self.tb].max(axis=-1, keepdims=True)
        forbid = forbid | ((ts_logprob > max_text) & self.is_text)  # timestamps likelier: one of them
        return mx.where(forbid, -mx.inf, x)

    def apply(self, logits: mx.array, tokens: mx.array) -> mx.array:
        n = min(2, tokens.shape[1] - self.sample_begin)
        last = tokens[:, -1:] if n >= 1 else tokens[:, :1]
        penult = tokens[:, -2:-1] if n >= 2 else last
        return self._fns[n](logits, last, penult)


class DeviceDecodingTask(DecodingTask):
    """mlx-whisper's DecodingTask with ``DeviceFilters`` and a loop of one sync per token.
    Greedy (temperature 0) and sampling (temperature > 0, ``best_of``); not beam search."""

    def __init__(self, model, options: DecodingOptions, compile: bool | None = None) -> None:
        super().__init__(model, options)
        self.on_device = on_device_filters(self, compile)

    def _get_audio_features(self, mel: mx.array) -> mx.array:
        d = self.model.dims
        if mel.shape[-1] == d.n_audio_state and mel.shape[-2] < d.n_audio_ctx:
            return mel  # encoded on a short context (mlx_bald.short_context)
        return super()._get_audio_features(mel)

    def _step(self, inputs: mx.array, audio_features: mx.array, tokens: mx.array, sum_logprobs: mx.array):
        pre_logits = self.inference.logits(inputs, audio_features)
        logits = pre_logits[:, -1]
        for f in self.logit_filters:
            logits = f.apply(logits, tokens)
        tokens, completed, sum_logprobs = self.decoder.update(tokens, logits, sum_logprobs)
        return tokens, completed, sum_logprobs, pre_logits

    def _main_loop(self, audio_features: mx.array, tokens: mx.array):
        """As mlx-whisper's loop (the same steps built, so the same sampler calls), but a step
        is started only once the one before it has not completed; on a GPU the next step's graph
        is built while the current one runs."""
        tokens, completed, sum_logprobs, pre_logits = self._step(
            tokens, audio_features, tokens, mx.zeros(tokens.shape[0]))
        if self.tokenizer.no_speech is not None:
            no_speech = mx.softmax(pre_logits[:, self.sot_index], axis=-1)[:, self.tokenizer.no_speech]
        else:
            no_speech = mx.full(tokens.shape[0], mx.nan)
        start = mx.async_eval if _compile_default() else mx.eval
        start(completed, tokens, sum_logprobs, no_speech)
        for _ in range(1, self.sample_len):
            if tokens.shape[-1] > self.n_ctx:
                break
            step = self._step(tokens[:, -1:], audio_features, tokens, sum_logprobs)  # a graph, not run
            if completed.item():  # the sync
                break
            tokens, completed, sum_logprobs, _ = step
            start(completed, tokens, sum_logprobs)
        return tokens, sum_logprobs, no_speech


def on_device_filters(task: DecodingTask, compile: bool | None = None) -> bool:
    """Swap ``task``'s logit filters for ``DeviceFilters`` where they are all known kinds."""
    filters = DeviceFilters.from_task(task, compile)
    if filters is not None:
        task.logit_filters = [filters]
    return filters is not None


def applies(options: DecodingOptions) -> bool:
    """Whether ``DeviceDecodingTask`` decodes these options (else: ``mlx_bald.decoding``)."""
    return options.beam_size is None and options.task != "lang_id"
