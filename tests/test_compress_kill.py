"""Issue #27: ``kill -9`` of a compress run at any stage, then the same command, resumes and
ends with the same report (timings aside) and the same weights as an uninterrupted run.

A real subprocess (tests/compress_worker.py: the encoder recipe, prune + AdaPTwin + recovery, on
a tiny random Whisper) sends itself SIGKILL at a chosen point; each chain kills it twice."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORKER = Path(__file__).resolve().parent / "compress_worker.py"
TIMINGS = ("seconds", "peak_rss_gib")  # keys holding these differ between any two runs


def _run(root: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), str(root), *([kill] if kill else [])],
                          capture_output=True, text=True, timeout=600)


def _without_timings(x):
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items() if not any(t in k for t in TIMINGS) and k != "out"}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def _result(root: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    report = json.loads((root / "run" / "report.json").read_text())
    return _without_timings(report), load_file(str(root / "student" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("whole")
    done = _run(root)
    assert done.returncode == 0, done.stderr[-2000:]
    return _result(root)


@pytest.mark.parametrize("kills", [
    ("step:46", "report:4"),  # in the second twin's training, after its step-20 checkpoint; between stages
    ("layer:1", "ckpt:3"),  # while writing the twins' SVD start; while writing a trainer checkpoint
])
def test_kill_9_then_rerun_ends_as_an_uninterrupted_run(tmp_path, uninterrupted, kills):
    for kill in kills:
        died = _run(tmp_path, kill)
        assert died.returncode == -signal.SIGKILL, (kill, died.returncode, died.stderr[-2000:])
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report, weights = _result(tmp_path)
    want_report, want_weights = uninterrupted
    assert report == want_report
    assert weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0, msg=name)
