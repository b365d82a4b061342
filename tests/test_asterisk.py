"""asterisk-<lang>: Debian's Asterisk prompts, real read speech with transcripts."""
from __future__ import annotations

import pytest

from mlx_bald.data.asterisk import parse_prompts
from mlx_bald.data.splits import split_of


def test_prompt_parser_keeps_speech_only():
    text = ("; Core Asterisk Sounds in English\n\n"
            "activated: Activated.\n"
            "beep: [this is a simple beep tone]\n"
            "silence/9: (9 seconds of silence)\n"
            "letters/at: at [@]\n"
            "letters/space: space [ ]\n"
            "spy-iax2: IAX (note: does not say \"2\")\n"
            "dir-welcome:\n"
            "digits/0: cero\n"
            "digits/0: diez\n"
            "priv-callpending: I have a caller waiting, who introduces themselves as:\n")
    assert parse_prompts(text) == {
        "activated": "Activated.", "letters/at": "at", "letters/space": "space", "digits/0": "cero",
        "priv-callpending": "I have a caller waiting, who introduces themselves as:"}


@pytest.mark.slow
def test_asterisk_sets_load_split_and_skip_non_speech():
    from mlx_bald.data import load_set

    parts = {s: load_set(f"asterisk-en:{s}") for s in ("train", "dev", "test")}
    ids = {s: {c.id for c in clips} for s, clips in parts.items()}
    assert not ids["train"] & ids["test"] and not ids["dev"] & ids["test"] and not ids["train"] & ids["dev"]
    everything = load_set("asterisk-en")
    assert {c.id for c in everything} == ids["train"] | ids["dev"] | ids["test"]
    assert [c.id for c in load_set("asterisk-en:test")] == sorted(ids["test"])  # deterministic
    assert all(split_of(c.id) == "test" for c in parts["test"])
    assert 500 < len(everything) < 568 and 30 < len(parts["test"]) < 80
    assert not any(c.text.startswith(("[", "(")) or "silence" in c.id for c in everything)
    assert {c.language for c in everything} == {"en"} and all(c.path.is_file() for c in everything)
    assert parts["test"][0].audio.shape[0] > 8000  # 8 kHz prompt read at 16 kHz
    for lang in ("es", "fr", "ru"):
        clips = load_set(f"asterisk-{lang}:test")
        assert len(clips) > 30 and {c.language for c in clips} == {lang} and all(c.text for c in clips)
