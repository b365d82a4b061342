"""The options of the short-context recipe (compress/recipes/short_context.py), torch-free so
that the CLI shows their defaults without importing torch (as start_config.py does)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHORT_AUDIO = ("asterisk-en:train", "tts-en:train", "fillets-cs:train", "fillets-nl:train")


@dataclass
class ShortContextOptions:
    out: Path
    model: str = "whisper-base"
    limit_s: float = 10.0  # clips up to this long are encoded on a short context
    registers: int = 16  # learned positions per encoder layer
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    audio: tuple[str, ...] = SHORT_AUDIO
    clips_per_set: int | None = 200
    dev: tuple[str, ...] = ("asterisk-en:dev", "fillets-cs:dev")
    dev_clips: int = 48  # per dev set
    test: tuple[str, ...] = ("asterisk-en:test", "librivox")
    bucket_s: float = 2.0
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    scores: bool = True  # the test WERs (decoding); the agreement is always measured
