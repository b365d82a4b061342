"""Speculative greedy decoding: a cheaper draft model proposes k tokens, the target checks all
k in ONE pass through its kv cache, and keeps the longest prefix it agrees with plus its own
next token; both caches are rolled back past what was rejected. The output is the target's
own greedy decoding (same logit filters, timestamp rules, log-probs); only the number of
target passes changes. k adapts to the measured acceptance (all accepted: k + 2, else k - 1).

Applies to greedy decoding of one window at a time (mlx-whisper's ``transcribe`` decodes that
way). Sampling (temperature fallback > 0), beam search and batches of several windows fall
back to the target alone, and say so once. A draft of the BaldWhisper shape keeps base's
encoder: its audio features are then shared, not recomputed.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields, replace

import mlx.core as mx
from mlx_whisper.decoding import DecodingOptions, DecodingTask

from .decoding import decode as plain_decode
from .device_loop import on_device_filters
from .errors import MlxBaldError

K_START, K_MAX = 4, 8


@dataclass
class DraftStats:
    """What the draft bought: proposals made, accepted, and rounds ended by a rejection;
    target passes; tokens emitted."""

    proposed: int = 0
    accepted: int = 0
    rejected: int = 0
    target_passes: int = 0
    tokens: int = 0
    windows: int = 0

    @property
    def acceptance(self) -> float | None:
        """Share of all proposals the target accepted."""
        return self.accepted / self.proposed if self.proposed else None

    @property
    def per_token(self) -> float | None:
        """Estimated chance that the draft's next token is the target's (each proposal is
        checked only while the ones before it were accepted): accepted / checked."""
        checked = self.accepted + self.rejected
        return self.accepted / checked if checked else None

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance": self.acceptance, "per_token": self.per_token}

    def since(self, earlier: "DraftStats") -> "DraftStats":
        """The counts added after ``earlier`` (a copy taken with ``dataclasses.replace``)."""
        return DraftStats(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})

    def summary(self) -> str:
        if not self.proposed:
            return "the draft proposed nothing (no greedy window was decoded with it)"
        return (f"draft acceptance {100 * self.acceptance:.1f}% ({self.accepted}/{self.proposed} "
                f"proposals); {self.tokens} tokens in {self.target_passes} target passes "
                f"({self.tokens / max(1, self.target_passes):.2f} tokens per pass)")


def _same_encoder(a, b) -> bool:
    if a.dims.n_audio_layer != b.dims.n_audio_layer or a.dims.n_audio_state != b.dims.n_audio_state:
        return False
    from mlx.utils import tree_flatten

    pa, pb = dict(tree_flatten(a.encoder.parameters())), dict(tree_flatten(b.encoder.parameters()))
    return pa.keys() == pb.keys() and all(
        pa[k].shape == pb[k].shape and bool(mx.array_equal(pa[k], pb[k])) for k in pa)


def truncate(cache, n: int):
    """The decoder cache holding only its first ``n`` positions (later slots are overwritten
    before any query can see them: one-token steps read up to their offset, longer inputs
    mask causally)."""
    return cache._replace(filled=cache.filled[:, :n])


class SpeculativeWhisper:
    """The target model, decoding with a draft's proposals; every other attribute is the
    target's, so mlx-whisper's ``transcribe`` (timestamps, word timings) drives it as is."""

    def __init__(self, target, draft, k: int = K_START, adaptive: bool = True) -> None:
        if draft.dims.n_vocab != target.dims.n_vocab:
            raise MlxBaldError(f"the draft's vocabulary ({draft.dims.n_vocab} tokens) differs from the "
                               f"target's ({target.dims.n_vocab}): a draft must share the tokenizer")
        if draft.dims.n_text_ctx < target.dims.n_text_ctx:
            raise MlxBaldError(f"the draft's text context ({draft.dims.n_text_ctx}) is shorter than the "
                               f"target's ({target.dims.n_text_ctx})")
        self.target, self.draft, self.k, self.adaptive = target, draft, k, adaptive
        self.shares_encoder = _same_encoder(target, draft)
        self.stats = DraftStats()
        self._said: set[str] = set()

    def __getattr__(self, name):  # only for names this class does not define
        return getattr(self.target, name)

    def say_once(self, reason: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            print(f"mlx-bald: {reason}: decoded by the target alone, without the draft "
                  "(same output)", file=sys.stderr)

    def decode(self, mel: mx.array, options: DecodingOptions = DecodingOptions(), **kwargs):
        """mlx-whisper's ``decode`` semantics; speculative where it applies."""
        if kwargs:
            options = replace(options, **kwargs)
        reason = None
        if options.task == "lang_id":
            return plain_decode(self.target, mel, options)
        if options.temperature > 0:
            reason = "sampling at temperature > 0 (fallback)"
        elif options.beam_size is not None:
            reason = "beam search"
        elif mel.ndim == 3 and mel.shape[0] > 1:
            reason = "several windows in one batch"
        elif not self.shares_encoder and mel.shape[-2:] == (self.dims.n_audio_ctx, self.dims.n_audio_state):
            reason = "encoded audio given, and the draft has its own encoder"
        if reason:
            self.say_once(reason)
            return plain_decode(self.target, mel, options)
        single = mel.ndim == 2
        results = SpeculativeDecodingTask(self, options).run(mel[None] if single else mel)
        return results[0] if single else results


class SpeculativeDecodingTask(DecodingTask):
    """mlx-whisper's DecodingTask on the target (prompt, filters, language detection,
    no-speech probability, result assembly), with a draft-and-verify main loop."""

    def __init__(self, model: SpeculativeWhisper, options: DecodingOptions) -> None:
        super().__init__(model, options)
        on_device_filters(self)  # the timestamp rules without a copy of the tokens to the host
        self.spec = model

    def _get_audio_features(self, mel: mx.array) -> mx.array:
        self._mel = mel
        return super()._get_audio_features(mel)

    def _choose(self, logits: mx.array, context: list[int]) -> tuple[mx.array, mx.array]:
        """Greedy choice after the logit filters and its log-prob (as GreedyDecoder), lazily."""
        tokens = mx.array([context])
        for f in self.logit_filters:
            logits = f.apply(logits, tokens)
        token = mx.argmax(logits[0])
        return token, logits[0, token] - mx.logsumexp(logits[0])

    def _main_loop(self, audio_features: mx.array, tokens: mx.array):
        spec, draft, eot = self.spec, self.spec.draft, self.tokenizer.eot
        if spec.shares_encoder:
            draft_features = audio_features
        else:
            mel = self._mel.astype(mx.float16) if self.options.fp16 else self._mel
            draft_features = draft.embed_audio(mel)
        seq = tokens[0].tolist()
        n_prompt = len(seq)
        max_len = min(len(seq) + self.sample_len, self.n_ctx + 1)
        logits = self.inference.logits(mx.array([seq]), audio_features)  # the prompt pass
        if self.tokenizer.no_speech is not None:
            no_speech = mx.softmax(logits[:, self.sot_index], axis=-1)[:, self.tokenizer.no_speech]
        else:
            no_speech = mx.full(1, mx.nan)
        token, logprob = self._choose(logits[:, -1].astype(mx.float32), seq)
        seq.append(token.item())
        sum_logprob = logprob.item()
        stats = spec.stats
        stats.windows += 1
        stats.target_passes += 1
        draft_cache, draft_len, k = None, 0, spec.k
        while seq[-1] != eot and len(seq) < max_len:
            k_now = min(k, max_len - len(seq) - 1)
            proposals: list[int] = []
            if k_now > 0:
                d_logits, draft_cache, _ = draft.decoder(mx.array([seq[draft_len:]]), draft_features,
                                                         draft_cache)
                draft_len = len(seq)
                while True:
                    p = self._choose(d_logits[:, -1].astype(mx.float32), seq + proposals)[0].item()
                    proposals.append(p)
                    if p == eot or len(proposals) == k_now:
                        break
                    d_logits, draft_cache, _ = draft.decoder(mx.array([[p]]), draft_features, draft_cache)
                    draft_len += 1
            logits = self.inference.logits(mx.array([[seq[-1]] + proposals]), audio_features)
            # the target's choice at every position, given that the proposals before it stand:
            # all filtered together, one sync
            chosen = [self._choose(logits[:, j], seq + proposals[:j]) for j in range(len(proposals) + 1)]
            tokens_j = mx.stack([c[0] for c in chosen]).tolist()
            logprobs_j = mx.stack([c[1] for c in chosen]).tolist()
            accepted = 0
            for j, (token, logprob) in enumerate(zip(tokens_j, logprobs_j)):
                seq.append(token)
                sum_logprob += logprob
                if j == len(proposals) or token != proposals[j] or token == eot:
                    accepted += int(j < len(proposals) and token == proposals[j])
                    break
                accepted += 1
            self.inference.kv_cache = truncate(self.inference.kv_cache, len(seq) - 1)
            draft_len = min(draft_len, len(seq) - 1)
            if draft_cache is not None:
                draft_cache = truncate(draft_cache, draft_len)
            stats.proposed += len(proposals)
            stats.accepted += accepted
            stats.rejected += int(accepted < len(proposals))
            stats.target_passes += 1
            if spec.adaptive and proposals:
                k = min(k + 2, K_MAX) if accepted == len(proposals) else max(1, k - 1)
        stats.tokens += len(seq) - n_prompt
        return mx.array([seq]), mx.array([sum_logprob]), no_speech
