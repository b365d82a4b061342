"""The options of the start stage of a depth-reduced decoder (compress/recipes/start.py),
torch-free so that the CLI can show their defaults without importing torch. The defaults are the
best variant measured by ``python -m benchmarks.recovery`` (docs/recovery.md)."""
from __future__ import annotations

from dataclasses import dataclass

LAYER_CHOICES = ("spaced", "pairs", "lower", "upper")
# the end-to-end student stages' rate after this start: measured on asterisk-es/fr, 1.5e-4 (the
# rate for near-random merged starts) first took the started decoder further from its teacher
# (dev CE 0.80 -> 0.97 in 116 steps) where 3e-5 brought it closer (0.69); docs/recovery.md
STUDENT_LR = 3e-5
# how the factored embedding starts (compress/recipes/bald.py, compress/train/embedding_fit.py)
EMBED_INITS = ("svd", "whiten", "fit")  # the default is whiten: the measured best start (docs/recovery.md)


@dataclass
class StartConfig:
    layers: str = "spaced"  # one of LAYER_CHOICES (see start_groups)
    alpha: float = 0.5  # "pairs" only: the lower layer's weight
    patch: str = "none"  # or an ops.patch.PATCH_KINDS entry ("refit": best of the patches measured)
    ridge: float = 0.3
    relative: bool = True  # weigh tokens by 1/|target|^2 in the patch fit (ops/patch.py)
    local_steps: int = 300
    local_lr: float = 1e-4
    local_inputs: str = "student"
    order: str = "local-then-patch"  # or "patch-then-local"
