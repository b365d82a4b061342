"""The published figures the benchmark compares against, and its speed-up targets: constants
that the harness (which records them in bench.json), the report and the plot all read."""
from __future__ import annotations

PAPER = {  # BaldWhisper, M1 MacBook Air, batch 10, 256 tokens; WER on Bambara
    "Whisper-base": {"tok_s": 66.57, "speedup": 1.0, "wer": 33.11},
    "merged (3 layers)": {"tok_s": 102.24, "speedup": 102.24 / 66.57, "wer": 34.77},
    "merged + rank-96 embedding": {"tok_s": 142.82, "speedup": 142.82 / 66.57, "wer": 36.49},
    "Whisper-tiny": {"tok_s": 116.24, "speedup": 116.24 / 66.57, "wer": None},
}
PAPER_OF = {"base": "Whisper-base", "merged3": "merged (3 layers)",
            "bald": "merged + rank-96 embedding", "tiny.en": "Whisper-tiny"}
TARGETS = {"bald": 2.5, "bald+twins32": 3.0}  # decoder speed-up over base, same modules
