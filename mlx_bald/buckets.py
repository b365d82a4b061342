"""The lengths a short audio context runs on (pure Python: the runtime and the compressor share it)."""
from __future__ import annotations

import math

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # mel frames; the encoder halves them
BUCKET_S = 2.0  # few distinct encoder shapes: 2, 4, 6, ... s


def bucket_frames(n_samples: int, n_frames_full: int = 3000, bucket_s: float = BUCKET_S) -> int:
    """Mel frames the encoder runs on for a clip of ``n_samples``: its length rounded up to a
    multiple of ``bucket_s`` (at least one bucket), at most the full window."""
    seconds = n_samples / SAMPLE_RATE
    buckets = max(1, math.ceil(seconds / bucket_s - 1e-9))
    return min(n_frames_full, int(round(buckets * bucket_s * FRAMES_PER_SECOND)))
