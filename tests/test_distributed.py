"""Data-parallel training with 2 real processes (torchrun, gloo on CPU): the same parameters
as one process on the same global batches, to float tolerance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _run(out: Path, nproc: int, steps: int | str = 6) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / f"params-{nproc}.pt")


@pytest.mark.slow
def test_two_gloo_processes_end_with_the_one_process_parameters(tmp_path):
    one = _run(tmp_path, 1)
    two = _run(tmp_path, 2)
    from ddp_worker import VOCAB
    from test_compress_ops import tiny_model

    start = tiny_model(seed=1, vocab_size=VOCAB).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in start if k in one and "decoder.layers.0" not in k
                and one[k].shape == start[k].shape)
    assert moved > 1e-3  # it trained
    for k, v in one.items():
        if k == "_loss":  # each rank reports its own rows' loss
            continue
        torch.testing.assert_close(two[k], v, atol=2e-5, rtol=1e-4, msg=f"{k} differs between 1 and 2 processes")
    # both wrote their step-6 checkpoint (rank 0 only)
    assert (tmp_path / "ckpt-1" / "distill_checkpoint.pt").is_file() and (tmp_path / "ckpt-2" / "distill_checkpoint.pt").is_file()


@pytest.mark.slow
def test_the_encoder_recipe_on_two_gloo_processes_builds_the_one_process_student(tmp_path):
    """Twins layer by layer, a pruning bridge and the end-to-end recovery, each rank on half of
    every batch: the same compressed encoder as one process, rank 0 alone writing."""
    one = _run(tmp_path, 1, "encoder")
    two = _run(tmp_path, 2, "encoder")
    assert one.keys() == two.keys()
    rows_one, rows_two = int(one.pop("_rows")), int(two.pop("_rows"))
    assert rows_two < 0.8 * rows_one  # rank 0 trained on its half of each batch (held-out checks are whole)
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, atol=5e-5, rtol=1e-4, msg=f"{k} differs between 1 and 2 processes")
    assert (tmp_path / "run-2" / "run" / "report.json").is_file()
