"""One run of the encoder recipe (prune + AdaPTwin + recovery) on a tiny random Whisper, for the
kill -9 test (tests/test_compress_kill.py): ``python compress_worker.py ROOT [WHERE:N]``.

WHERE:N sends this process SIGKILL at the N-th of: ``step`` (an optimiser step: inside a stage's
training), ``ckpt`` (a trainer checkpoint, half written), ``layer`` (a trained layer file,
half written) or ``report`` (just after report.json is rewritten: between stages)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from test_compress_ops import tiny_model  # noqa: E402
from test_recipe_adaptwin import tiny_run  # noqa: E402

import mlx_bald.compress.recipes.encoder as encoder  # noqa: E402
from mlx_bald.compress.recipes.skeleton import RecipeRun  # noqa: E402

OPTIONS = dict(prune=1, epochs=6, bridge_epochs=6, recover_epochs=6, compression=0.3)  # 24 steps a stage


def _kill_at(where: str, n: int) -> None:
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == n

    def die() -> None:
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def half_written(write):
        def wrapped(obj, path, *a, **k):
            if due():  # a real write of the whole file, then its second half cut off, then death
                write(obj, path, *a, **k)
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                die()
            return write(obj, path, *a, **k)
        return wrapped

    if where == "step":
        step = torch.optim.AdamW.step
        torch.optim.AdamW.step = lambda self, *a, **k: die() if due() else step(self, *a, **k)
    elif where == "ckpt":
        torch.save = half_written(torch.save)
    elif where == "layer":
        encoder.save_file = half_written(encoder.save_file)
    elif where == "report":
        save = RecipeRun.save_report

        def save_then_maybe_die(self, **updates):
            save(self, **updates)
            if due():
                die()
        RecipeRun.save_report = save_then_maybe_die
    else:
        raise SystemExit(f"unknown kill point {where!r}")


def main(root: Path, kill: str | None) -> None:
    if kill:
        where, n = kill.split(":")
        _kill_at(where, int(n))
    kw = tiny_run(root, tiny_model(encoder_layers=3), **OPTIONS)
    o = kw.pop("o")
    encoder.run_encoder(o, root / "student", progress=False, **kw)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
