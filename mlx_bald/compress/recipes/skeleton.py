"""The run/report/resume skeleton every recipe uses.

A run lives in one output folder: ``work/`` (stage checkpoints, caches of the run) and
``report.json`` (the options, each stage's results, wall time of this session, peak RSS),
rewritten atomically by rank 0 after every stage. A rerun on the same folder resumes: each
stage skips what its checkpoint or saved result says is done. Options that define what was
trained (``fixed``) may not change between runs on one folder.
"""
from __future__ import annotations

import json
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from mlx_bald.compress.train.hardware import is_main


def options_dict(options) -> dict:
    """A recipe's options dataclass as JSON values (paths as strings)."""
    return json.loads(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}))


class RecipeRun:
    """``out``/work and ``out``/report.json of one recipe run (see the module doc)."""

    def __init__(self, out: str | Path, options, fixed: Sequence[str] = ()):
        self.out, self._work = Path(out), Path(out) / "work"
        self.t0 = time.time()
        self.report_path = self.out / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.exists() else {}
        self.set_options(options, fixed)

    @property
    def work(self) -> Path:
        """``out``/work, created (and marked as mlx-bald's) on first use: a run refused while
        loading its model or data leaves nothing on disk."""
        if is_main() and not self._work.is_dir():
            from mlx_bald.fsutil import mark

            self._work.mkdir(parents=True, exist_ok=True)
            mark(self._work)
        return self._work

    def set_options(self, options, fixed: Sequence[str] = ()) -> None:
        """Record the options; refuse a folder whose run was made with other ``fixed`` ones."""
        now, before = options_dict(options), self.report.get("options", {})
        changed = [k for k in fixed if k in before and before[k] != now[k]]
        if changed:
            raise ValueError(f"{self.out} holds a run made with other {', '.join(changed)}; use another output folder")
        self.report["options"] = now

    def save_report(self, **updates) -> None:
        """Update the report (every rank keeps it); rank 0 writes it."""
        self.report.update(updates)
        self.report["wall_seconds_this_session"] = round(time.time() - self.t0, 1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.report["peak_rss_gib"] = round(max(peak, self.report.get("peak_rss_gib", 0)), 2)
        if not is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report, indent=2))
        tmp.replace(self.report_path)
