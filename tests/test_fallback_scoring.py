"""The recipes' scoring as users decode (compress/train/greedy.py): which hypotheses count as
looping, and the temperature fallback that re-decodes only those (or unlikely ones)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mlx_bald.compress.train import greedy as g  # noqa: E402


def test_loops_are_unfinished_or_repetitive_hypotheses():
    assert not g.Hypothesis("And Mr. John Dashwood had then leisure to consider.", -0.2, True).looping
    assert g.Hypothesis("the the the the the the the the the the the the the the the", -0.1, True).looping
    assert g.Hypothesis("cut by the token budget", -0.1, False).looping
    unlikely = g.Hypothesis("a fine sentence that the model doubts", -1.5, True)
    assert not unlikely.looping and unlikely.needs_fallback


def test_fallback_redecodes_only_what_needs_it_at_rising_temperatures(monkeypatch):
    good = g.Hypothesis("fine", -0.1, True)
    loop = g.Hypothesis("la " * 40, -0.1, False)
    temps = []

    def decode(model, states, language, max_new_tokens, temperature=0.0, generator=None):
        temps.append(temperature)  # the second sample is the first acceptable one
        return [loop if len(temps) < 2 else g.Hypothesis("recovered", -0.3, True)]

    monkeypatch.setattr(g, "decode_hypotheses", decode)
    out = g.fallback_transcribe(None, torch.zeros(2, 3, 4), "en", greedy=[good, loop])
    assert [h.text for h in out] == ["fine", "recovered"]
    assert temps == list(g.FALLBACK_TEMPERATURES[:2])  # only the looping one, from 0.2 up
