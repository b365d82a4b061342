"""Teacher-forced decoder states: what each decoder layer reads and writes, captured with hooks
on real batches, and the token-level scores of a student against its teacher's tokens.

The start stage (recipes/start.py) fits its least-squares patches on these states and trains
each student layer locally against the teacher layer block it replaces. Positions are those of a
batch's real tokens (prompt included, padding excluded), flattened to rows.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from mlx_bald.compress.train.data import IGNORE
from mlx_bald.compress.train.distill import decoder_forward


def real_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: every position up to a row's last label (the prompt is real, padding is not)."""
    has = labels != IGNORE
    last = torch.where(has, torch.arange(labels.shape[1]), -1).max(1).values
    return torch.arange(labels.shape[1])[None, :] <= last[:, None]


def _layers(model: nn.Module) -> nn.ModuleList:
    return model.model.decoder.layers


@contextmanager
def captured(model: nn.Module, want: dict[int, Sequence[str]],
             replace_input: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict]:
    """While open, every forward of ``model``'s decoder fills ``seen[i][part]`` for each layer i
    of ``want`` with the parts asked for: ``x`` (layer input), ``a`` (fc2 input), ``f`` (fc2
    output), ``y`` (layer output). ``replace_input(i, x)``, if given, substitutes the input that
    layer i reads (e.g. the teacher's state, or the student's own, detached)."""
    seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in want}
    handles = []
    for i, parts in want.items():
        layer = _layers(model)[i]

        def pre(_m, args, kwargs, i=i, parts=parts):
            x = args[0] if args else kwargs["hidden_states"]
            if replace_input is not None:
                x = replace_input(i, x)
            if "x" in parts:
                seen[i]["x"] = x
            if args:
                return (x, *args[1:]), kwargs
            return args, kwargs | {"hidden_states": x}

        def post(_m, _args, out, i=i):
            seen[i]["y"] = out[0] if isinstance(out, tuple) else out

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        if "y" in parts:
            handles.append(layer.register_forward_hook(post))
        if "a" in parts or "f" in parts:
            def fc2_hook(_m, args, out, i=i):
                seen[i]["a"], seen[i]["f"] = args[0], out
            handles.append(layer.fc2.register_forward_hook(fc2_hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class _Stop(Exception):
    """Raised once the last layer asked for has run: the layers above it are not needed."""


@torch.no_grad()
def layer_rows(model: nn.Module, batches: Iterable[dict], want: dict[int, Sequence[str]]
               ) -> dict[int, dict[str, torch.Tensor]]:
    """The parts ``want`` asks for (see ``captured``) at every real position of ``batches``,
    concatenated into [rows, width] float32 tensors (CPU)."""
    rows: dict[int, dict[str, list[torch.Tensor]]] = {i: {p: [] for p in parts} for i, parts in want.items()}
    last = _layers(model)[max(want)]

    def stop(_m, _args, _out):
        raise _Stop

    for batch in batches:
        keep = real_positions(batch["labels"])
        with captured(model, want) as seen:
            handle = last.register_forward_hook(stop)  # after captured's own hooks on that layer
            try:
                decoder_forward(model, batch)
            except _Stop:
                pass
            finally:
                handle.remove()
        for i, parts in want.items():
            for p in parts:
                rows[i][p].append(seen[i][p][keep.to(seen[i][p].device)].float().cpu())
    return {i: {p: torch.cat(v) for p, v in parts.items()} for i, parts in rows.items()}


def token_batches(clips, cache, labels: dict[str, str], vocab: int, transcript_tokens: int,
                  batch_size: int = 8) -> list[dict]:
    """Batches (encoder states, tokens, labels) of ``clips`` teacher-forced on ``labels`` (a
    teacher's transcripts by clip id, decoded with at most ``transcript_tokens`` tokens, which
    are never cut), in a fixed order."""
    from mlx_bald.compress.train.data import batches_from_cache

    room = transcript_tokens + 8  # the prompt (at most 4 tokens) and end-of-text
    epoch = batches_from_cache(clips, cache, batch_size, 0, texts=labels, vocab=vocab, max_tokens=room)(0)
    return [epoch[i] for i in range(len(epoch))]


def suppressed_logits(logits: torch.Tensor, eot: int) -> torch.Tensor:
    """Logits with every special and timestamp token after eot masked, as the recipes' greedy
    decoder masks them (train/greedy.py), so an argmax is a token greedy decoding could pick."""
    out = logits.clone()
    out[..., eot + 1:] = -float("inf")
    return out


@torch.no_grad()
def teacher_forced_scores(model: nn.Module, batches: Iterable[dict], eot: int) -> dict[str, float]:
    """On batches whose labels are a teacher's own greedy tokens: ``agreement`` (% of label
    tokens the model's argmax reproduces, teacher-forced) and ``ce`` (nats/token on them)."""
    model.eval()
    hits = total = 0
    ce = 0.0
    for batch in batches:
        hidden, _ = decoder_forward(model, batch)
        logits = model.proj_out(hidden).float().cpu()
        labels = batch["labels"]
        mask = labels != IGNORE
        hits += int((suppressed_logits(logits, eot).argmax(-1)[mask] == labels[mask]).sum())
        ce += F.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
        total += int(mask.sum())
    return {"agreement": round(100.0 * hits / max(total, 1), 2), "ce": round(ce / max(total, 1), 4), "tokens": total}
