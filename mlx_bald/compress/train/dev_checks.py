"""Training in segments with dev checks: the best check is kept, and training stops after
``patience`` checks without a better one (early stopping).

Every end-to-end stage of the recipes uses it (the teacher fine-tune, the merged student, the
low-rank embedding): on a few hundred clips, training loss keeps falling long after the dev
loss has turned (measured: a specialised merged student went 0.80 -> 0.88 dev CE at train CE
0.02), so the last step is not the model to hand on. A check is a dict of dev scores; ``key``
says which one ranks them (dev cross-entropy, or dev WER as users decode, CE breaking ties).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DevChecks:
    evals: int = 6  # dev checks over a stage (the start, step 0, is checked before it)
    patience: int = 2  # checks without a better one before the stage stops
    key: str = "dev_ce"  # the score that ranks checks (lower is better); "dev_ce" breaks ties


def check_steps(total: int, evals: int) -> list[int]:
    """The steps at which a ``total``-step stage is checked: every total // evals, and the last."""
    every = max(1, total // max(evals, 1))
    return sorted({*range(every, total, every), total})


def best_check(history: list[dict], key: str = "dev_ce") -> dict:
    """The check with the lowest ``key`` (then dev CE); the first of equals (so the start wins ties)."""
    return min(history, key=lambda h: (h[key], h["dev_ce"]))


def train_checked(train_to: Callable[[int], None], measure: Callable[[], dict], save_best: Callable[[], None],
                  total: int, history: list[dict], on_check: Callable[[list[dict]], None],
                  checks: DevChecks = DevChecks(), log: Callable[[str], None] = print) -> dict:
    """Train to each of ``check_steps(total)`` in turn (``train_to(step)`` continues from the
    stage's checkpoint), check ``measure()`` after each and ``save_best()`` when it is the best
    so far. ``measure()`` gives a check's scores ({"dev_ce": ..., and ``checks.key``}). ``history`` holds the checks made so far, the start (step 0) first: a resumed stage
    skips the steps already checked. ``on_check(history)`` is called after every check (to save
    the report). Returns the best check, which may be the start."""
    if not history or history[0]["step"] != 0:
        raise ValueError("the history of a checked stage starts with its start (step 0)")
    for target in check_steps(total, checks.evals):
        if any(h["step"] == target for h in history):
            continue  # checked before an interruption
        best = best_check(history, checks.key)
        if sum(h["step"] > best["step"] for h in history) >= checks.patience:
            log(f"no better {checks.key} for {checks.patience} checks: stopped at step {history[-1]['step']}, "
                f"kept step {best['step']} ({checks.key} {best[checks.key]})")
            break
        train_to(target)
        history.append({"step": target, **measure()})
        if best_check(history, checks.key) is history[-1]:
            save_best()
        on_check(history)
    return best_check(history, checks.key)
