"""Command-line options shared by the commands that read labelled sets (eval, compress)."""
from __future__ import annotations

import argparse

SET_FORMS = ("librivox | fillets-<lang>[:train|dev|test] (e.g. fillets-cs:test) | "
             "asterisk-<lang>[:train|dev|test] (en, es, fr, ru; e.g. asterisk-en:test) | your "
             "labelled data: a manifest PATH.jsonl or PATH.csv (columns audio, text, optional "
             "language), an audiofolder or save_to_disk folder PATH[:split], or a Hugging Face "
             "hub dataset hf:NAME[:CONFIG]:SPLIT (needs internet; e.g. "
             "hf:mozilla-foundation/common_voice_17_0:cs:test)")


def add_column_args(p: argparse.ArgumentParser) -> None:
    """--audio-column, --text-column, --language: how to read a user's manifest or dataset."""
    p.add_argument("--audio-column", default=None,
                   help="your data's audio column (default: audio; file_name in an audiofolder's metadata)")
    p.add_argument("--text-column", default=None,
                   help="your data's transcript column (default: the first of text, sentence, transcription)")
    p.add_argument("--language", default=None,
                   help="the language of your data where it has no language/locale column (a Whisper "
                        "code such as en or cs, or its name)")
