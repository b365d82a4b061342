"""argparse ``type=`` functions for every numeric option of every subcommand, so that a bad
value (a negative step count, a zero rank, a threshold out of range, nan, inf) is refused at
parse time, in one line, before anything is loaded or written."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def bounded(cast: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, allow_none: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` (int or float), finite, within [lo, hi] (open ends with
    ``lo_open``/``hi_open``); ``allow_none``: the word 'None' gives None (mlx-whisper's CLI convention)."""
    want = "a whole number" if cast is int else "a number"
    if lo is not None and hi is not None:
        want += f" {lo} {'<' if lo_open else '<='} x {'<' if hi_open else '<='} {hi}"
    elif lo is not None:
        want += f" {'>' if lo_open else '>='} {lo}"
    if allow_none:
        want += " or None"

    def parse(text: str):
        if allow_none and text.strip() == "None":
            return None
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
                or (hi is not None and (value >= hi if hi_open else value > hi)):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = want  # argparse names the type in some messages
    return parse


positive_int = bounded(int, 1)  # ranks, batches, beams, clips, sizes
nonneg_int = bounded(int, 0)  # steps and epochs where 0 means "skip this training", seeds
port = bounded(int, 0, 65535)
positive_float = bounded(float, 0, lo_open=True)  # learning rates, seconds, megabytes
nonneg_float = bounded(float, 0)  # loss weights, temperatures
fraction = bounded(float, 0, 1)  # weights and probabilities in [0, 1]
open_fraction = bounded(float, 0, 1, lo_open=True, hi_open=True)  # 0 < x < 1
optional_float = bounded(float, allow_none=True)
optional_positive_float = bounded(float, 0, lo_open=True, allow_none=True)
optional_nonneg_float = bounded(float, 0, allow_none=True)
optional_fraction = bounded(float, 0, 1, allow_none=True)


def number_list(item: Callable[[str], Any]) -> Callable[[str], list]:
    """An argparse type: comma-separated values, each checked by ``item``; at least one."""
    def parse(text: str) -> list:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return values

    parse.__name__ = f"comma-separated list ({item.__name__})"
    return parse
