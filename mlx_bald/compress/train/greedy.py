"""Batched greedy decoding of a transformers Whisper on cached encoder states: the quick
dev-set check used inside the compression recipes (final numbers come from `mlx-bald eval`)."""
from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mlx_bald.compress.train.data import token_sequence, tokenizer


FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)  # after 0.0, as mlx-whisper's transcribe
COMPRESSION_RATIO_THRESHOLD = 2.4  # gzip ratio of the text (openai-whisper / mlx-whisper)
LOGPROB_THRESHOLD = -1.0


@dataclass
class Hypothesis:
    text: str
    avg_logprob: float
    finished: bool  # ended with end-of-text (not cut by the token budget)

    @property
    def compression_ratio(self) -> float:
        raw = self.text.encode()
        return len(raw) / max(len(zlib.compress(raw)), 1)

    @property
    def looping(self) -> bool:
        """No end-of-text, or text that repeats itself: the signs of a repetition loop."""
        return not self.finished or self.compression_ratio > COMPRESSION_RATIO_THRESHOLD

    @property
    def needs_fallback(self) -> bool:
        return self.looping or self.avg_logprob < LOGPROB_THRESHOLD


@torch.no_grad()
def decode_hypotheses(model, encoder_states: torch.Tensor, language: str | None, max_new_tokens: int = 120,
                      temperature: float = 0.0, generator: torch.Generator | None = None) -> list[Hypothesis]:
    """encoder_states [B, S, d] -> B hypotheses (no timestamps); temperature 0 is greedy."""
    vocab = model.config.vocab_size
    tok = tokenizer(vocab)
    prompt, _ = token_sequence("", language, vocab)
    prompt = prompt[:-2] if len(prompt) > 2 else prompt  # drop the encoded " " and eot
    prompt = [t for t in prompt if t != tok.eot]
    b = encoder_states.shape[0]
    weight = next(model.parameters())
    enc = (encoder_states.to(weight.device, weight.dtype),)
    ids = torch.tensor([prompt] * b, device=weight.device)
    out = model(encoder_outputs=enc, decoder_input_ids=ids, use_cache=True)
    past, done = out.past_key_values, torch.zeros(b, dtype=torch.bool)
    generated: list[list[int]] = [[] for _ in range(b)]
    logprob = torch.zeros(b, dtype=torch.float64)
    logits = out.logits[:, -1]
    for _ in range(max_new_tokens):
        logits[:, tok.no_timestamps:] = -float("inf")  # no timestamps, no special tokens
        logits[:, tok.eot + 1:tok.no_timestamps] = -float("inf")
        logits = logits.float().cpu()
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        step_lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0]
        for i in range(b):
            if not done[i]:
                logprob[i] += float(step_lp[i])
                if int(nxt[i]) == tok.eot:
                    done[i] = True
                else:
                    generated[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        out = model(encoder_outputs=enc, decoder_input_ids=nxt[:, None].to(weight.device), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return [Hypothesis(tok.decode(g).strip(), float(logprob[i]) / (len(g) + 1), bool(done[i]))
            for i, g in enumerate(generated)]


def greedy_transcribe(model, encoder_states: torch.Tensor, language: str | None,
                      max_new_tokens: int = 120) -> list[str]:
    """encoder_states [B, S, d] -> B texts (temperature 0, no timestamps)."""
    return [h.text for h in decode_hypotheses(model, encoder_states, language, max_new_tokens)]


def fallback_transcribe(model, encoder_states: torch.Tensor, language: str | None, max_new_tokens: int = 120,
                        seed: int = 0, greedy: list[Hypothesis] | None = None) -> list[Hypothesis]:
    """As users decode (mlx-whisper's transcribe rule): greedy (or the ``greedy`` hypotheses
    given), and a hypothesis that loops, repeats itself or is unlikely is re-decoded by sampling
    at rising temperatures (seeded)."""
    hyps = list(greedy) if greedy is not None else decode_hypotheses(model, encoder_states, language, max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    for i, h in enumerate(hyps):
        for temp in FALLBACK_TEMPERATURES:
            if not h.needs_fallback:
                break
            h = decode_hypotheses(model, encoder_states[i:i + 1], language, max_new_tokens, temp, gen)[0]
        hyps[i] = h
    return hyps


@torch.no_grad()
def greedy_pseudo_labels(model, ids: Sequence[str], languages: Mapping[str, str | None],
                         encoder_output: Callable[[list[str]], torch.Tensor], path: Path, desc: str,
                         batch_size: int = 8, max_new_tokens: int = 120, progress: bool = True) -> dict[str, str]:
    """``model``'s own greedy transcript of each item in ``ids`` (``encoder_output(chunk)``
    gives their encoder states [B, S, d]), decoded in the item's language (one language per
    batch: it is the decoding prompt). Saved to ``path`` (json) after every batch, so a rerun
    completes what is missing and redoes nothing."""
    from tqdm import tqdm

    labels: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    by_language: dict[str | None, list[str]] = {}
    for i in ids:
        if i not in labels:
            by_language.setdefault(languages[i], []).append(i)
    chunks = [(lang, g[k:k + batch_size]) for lang, g in by_language.items() for k in range(0, len(g), batch_size)]
    for lang, chunk in tqdm(chunks, desc=desc, file=sys.stderr, disable=not (chunks and progress)):
        for i, text in zip(chunk, greedy_transcribe(model, encoder_output(chunk), lang, max_new_tokens)):
            labels[i] = text
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(labels, ensure_ascii=False, indent=1))
        tmp.replace(path)
    return labels


def dev_wer(model, clips, cache, batch_size: int = 8, max_new_tokens: int = 120, decode: str = "greedy") -> float:
    """Corpus WER (%) of ``model`` on ``clips`` using their cached encoder states, decoded
    ``greedy`` or with the ``fallback`` users get."""
    scores = decoded_wer(model, clips, cache, batch_size, max_new_tokens, fallback=decode == "fallback")
    return scores["wer"] if decode == "fallback" else scores["greedy"]


def decoded_wer(model, clips, cache, batch_size: int = 8, max_new_tokens: int = 120,
                fallback: bool = True) -> dict[str, float]:
    """{"greedy": corpus WER (%) decoded greedily, "loops": greedy hypotheses that loop, and with
    ``fallback`` "wer": the WER as users decode (fallback_transcribe, on the same greedy pass)}."""
    from mlx_bald.compress.train.distill import load_cached_encoder_output
    from mlx_bald.evaluate import corpus_wer

    model.eval()
    greedy: list[Hypothesis] = []
    users: list[Hypothesis] = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        states = torch.stack([load_cached_encoder_output(cache, c.id) for c in chunk])
        hyps = decode_hypotheses(model, states, chunk[0].language, max_new_tokens)
        greedy += hyps
        if fallback:
            users += fallback_transcribe(model, states, chunk[0].language, max_new_tokens, seed=start, greedy=hyps)
    refs, lang = [c.text for c in clips], clips[0].language
    out = {"greedy": corpus_wer(refs, [h.text for h in greedy], lang)[0], "loops": sum(h.looping for h in greedy)}
    if fallback:
        out["wer"] = corpus_wer(refs, [h.text for h in users], lang)[0]
    return out


@torch.no_grad()
def dev_cross_entropy(model, clips, cache, batch_size: int = 16, max_tokens: int = 64) -> float:
    """Teacher-forced cross-entropy (nats/token) on the reference texts: a smooth dev signal
    that still ranks students whose greedy output is all wrong (WER 100)."""
    from torch.nn import functional as F

    from mlx_bald.compress.train.data import batches_from_cache

    model.eval()
    weight = next(model.parameters())
    total, count = 0.0, 0
    for b in batches_from_cache(clips, cache, batch_size, 0, vocab=model.config.vocab_size, max_tokens=max_tokens)(0):
        logits = model(encoder_outputs=(b["encoder_hidden_states"].to(weight.device, weight.dtype),),
                       decoder_input_ids=b["decoder_input_ids"].to(weight.device), use_cache=False).logits.cpu()
        mask = b["labels"] != -100
        total += F.cross_entropy(logits[mask].float(), b["labels"][mask], reduction="sum").item()
        count += int(mask.sum())
    return total / max(count, 1)
