"""The general student's data ladder (issue #17): general students trained on growing numbers of
30 s windows, each rung the same mix and the same steps, so that only the data changes.

A rung of N windows: 15% Czech clips (``fillets-cs:train``), 10% Dutch (``fillets-nl:train``),
every packed window of the real Asterisk English train split (``pack:asterisk-en:train``) and
the rest synthetic English (``synth-en``: windows 0..k-1, so rungs are nested). Targets are
base's own greedy transcripts; teacher = base. Two shapes per rung:
- ``bald``: 3 merged decoder layers + rank-96 embedding; its ``merged`` stage is the "3 merged
  layers" row, the student that ``mlx-bald convert --head shortlist`` gives a shortlist head
  (a convert-time head, exact where its shortlist holds; the row is decoded with the full head);
- ``emb256``: no merge, rank-256 embedding.

    python -m benchmarks.studies.general_ladder --rungs 250,1000 --out runs/ladder
    python -m benchmarks.studies.general_ladder --report-only --out runs/ladder   # table, fit and plot

Writes benchmarks/studies/results/general_ladder.{json,md,png}: WER on LibriVox, asterisk-en:test and
fillets-cs:test, training minutes, peak memory, and a power-law fit WER(N) = a * N^-b per
shape and set with the N each target needs.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHAPES = {"bald": ["--start", "pairs", "--alpha", "0.2"], "emb256": ["--groups", "none", "--rank", "256"]}
SETS = {"wer_librivox": "LibriVox", "wer_asterisk": "asterisk-en:test", "wer_test": "fillets-cs:test"}
ASTERISK_WINDOWS = "pack:asterisk-en:train@all"


def mix(n: int) -> tuple[int, int, int]:
    """(Czech clips, Dutch clips, synthetic windows) of a rung of ``n`` windows, beside the 77
    packed Asterisk windows."""
    cs, nl = round(0.15 * n), round(0.10 * n)
    return cs, nl, max(n - cs - nl - 77, 0)


def command(n: int, shape: str, out: Path, a: argparse.Namespace) -> list[str]:
    cs, nl, synth = mix(n)
    cmd = [sys.executable, "-m", "mlx_bald", "compress", "--recipe", "bald", "--general", "--lang", "cs",
           "--out", str(out / f"r{n}-{shape}"), "--name", f"ladder-r{n}-{shape}", "--max-train-clips", str(cs),
           "--extra-audio", f"fillets-nl:train@{nl},{ASTERISK_WINDOWS},synth-en:{synth}@all",
           "--dev-clips", str(a.dev_clips), "--device", a.device, *SHAPES[shape]]
    if not a.precompute:  # the same training without the cross-attention K/V and target caches on disk
        cmd.append("--no-precompute")
    if shape == "bald":
        return cmd + ["--merge-steps", str(a.merge_steps), "--embed-steps", str(a.embed_steps)]
    return cmd + ["--embed-steps", str(a.steps256)]


def collect(out: Path, rungs: list[int]) -> list[dict]:
    """One row per (rung, student) from each run's report.json."""
    rows = []
    for n in rungs:
        for shape in SHAPES:
            path = out / f"r{n}-{shape}" / "report.json"
            if not path.is_file() or "table" not in (rep := json.loads(path.read_text())):
                continue
            table = {r["model"]: r for r in rep["table"]}
            windows = sum(rep["student"]["spec"]["notes"]["train_audio"].values())
            train_s = rep.get("merged", {}).get("train_seconds", 0) + rep["student"].get("train_seconds", 0)
            common = {"rung": n, "windows": windows, "peak_rss_gib": rep["peak_rss_gib"],
                      "wall_minutes": round(rep["wall_seconds_this_session"] / 60, 1)}
            if shape == "bald":
                rows.append({**common, "student": "3 merged layers", **_wers(table["merged"]),
                             "params": table["merged"]["params"],
                             "train_minutes": round(rep["merged"].get("train_seconds", 0) / 60, 1)})
                final = table["merged+lowrank-embedding"]
                rows.append({**common, "student": "BaldWhisper (3 merged + rank-96)", **_wers(final),
                             "params": final["params"], "train_minutes": round(train_s / 60, 1)})
            else:
                final = table["lowrank-embedding"]
                rows.append({**common, "student": "rank-256 embedding", **_wers(final), "params": final["params"],
                             "train_minutes": round(train_s / 60, 1)})
            base = table["whisper-base"]
            rows.append({**common, "student": "whisper-base", **_wers(base), "params": base["params"],
                         "train_minutes": 0.0})
    return rows


def _wers(row: dict) -> dict:
    return {k: row.get(k) for k in SETS}


def fit(points: list[tuple[int, float]]) -> dict | None:
    """Least squares of log WER = log a - b log N (two or more rungs)."""
    pts = [(n, w) for n, w in points if w and w > 0]
    if len({n for n, _ in pts}) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in pts], [math.log(w) for _, w in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"a": round(math.exp(my - slope * mx), 3), "b": round(-slope, 4)}


def needed(f: dict | None, limit: float) -> float | None:
    """Windows at which the fitted curve reaches ``limit`` (None: it never falls)."""
    if not f or f["b"] <= 0:
        return None
    return (f["a"] / limit) ** (1 / f["b"])


def report(rows: list[dict]) -> dict:
    from mlx_bald.compress.recipes.bald_table import GENERAL_TARGETS

    base = next(r for r in rows if r["student"] == "whisper-base")
    limits = {}
    for col, kind, bound in GENERAL_TARGETS.values():
        limits[col] = base[col] + bound if kind == "plus" else base[col] * bound
    fits = {}
    for student in dict.fromkeys(r["student"] for r in rows if r["student"] != "whisper-base"):
        for col in SETS:
            f = fit([(r["windows"], r[col]) for r in rows if r["student"] == student])
            n = needed(f, limits[col])
            fits[key(student, col)] = {"fit": f, "limit": round(limits[col], 2),
                                          "windows_needed": None if n is None else round(n)}
    return {"rows": rows, "limits": {k: round(v, 2) for k, v in limits.items()}, "fits": fits}


def key(student: str, col: str) -> str:
    return f"{student} / {SETS[col]}"


def write(result: dict, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = ["| rung | windows | student | params | LibriVox | asterisk-en:test | fillets-cs:test | train min | "
             "run min | peak RSS GiB |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['rung']} | {r['windows']} | {r['student']} | {r['params'] / 1e6:.2f}M | {r['wer_librivox']} | "
                     f"{r['wer_asterisk']} | {r['wer_test']} | {r['train_minutes']} | {r['wall_minutes']} | "
                     f"{r['peak_rss_gib']} |")
    lines += ["", "| student, set | fit WER = a N^-b | target | windows the fit needs |", "|---|---|---:|---:|"]
    for k, v in result["fits"].items():
        f = v["fit"]
        needs = (f"{v['windows_needed']:,}" if v["windows_needed"] is not None
                 else "never (the fit does not fall)" if f else "- (one rung: no fit)")
        lines.append(f"| {k} | " + (f"a={f['a']}, b={f['b']}" if f else "-") + f" | {v['limit']} | {needs} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(result, RESULTS / f"{name}.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (col, title) in zip(axes, SETS.items()):
        for student in dict.fromkeys(r["student"] for r in rows if r["student"] != "whisper-base"):
            pts = sorted((r["windows"], r[col]) for r in rows if r["student"] == student)
            line, = ax.plot(*zip(*pts), "o", label=student)
            f = result["fits"][key(student, col)]["fit"]
            if f:
                hi = max(pts[-1][0] * 64, 10 ** 5)
                xs = [pts[0][0] * (hi / pts[0][0]) ** (k / 50) for k in range(51)]
                ax.plot(xs, [f["a"] * x ** -f["b"] for x in xs], "--", color=line.get_color(), alpha=0.7)
        ax.axhline(result["limits"][col], color="k", lw=1, label="target")
        ax.set(xscale="log", yscale="log", xlabel="training windows (30 s)", ylabel="WER %", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("General students: WER against training data (points measured, dashed: power-law fit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rungs", default="250,1000", help="training windows per rung, comma-separated")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"students per rung ({', '.join(SHAPES)})")
    p.add_argument("--out", type=Path, default=Path("runs/ladder"))
    p.add_argument("--merge-steps", type=int, default=200)
    p.add_argument("--embed-steps", type=int, default=150)
    p.add_argument("--steps256", type=int, default=200, help="steps of the rank-256 embedding-only student")
    p.add_argument("--dev-clips", type=int, default=48)
    p.add_argument("--no-precompute", dest="precompute", action="store_false",
                   help="train without the on-disk K/V and target caches (a 1,000-window rank-256 rung needs "
                        "~20 GB of them)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (a GPU runs the largest rung)")
    p.add_argument("--name", default="general_ladder", help="results file name under benchmarks/studies/results")
    p.add_argument("--report-only", action="store_true", help="collect the finished runs: table, fit, plot")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    rungs = [int(x) for x in a.rungs.split(",")]
    if not a.report_only:  # shape-major: every rung of the first shape before the second shape
        for shape in a.shapes.split(","):
            for n in rungs:
                cmd = command(n, shape, a.out, a)
                print("$ " + " ".join(cmd), flush=True)
                if a.dry_run:
                    continue
                t0 = time.time()
                subprocess.run(cmd, check=True)
                print(f"[ladder] rung {n} {shape}: {(time.time() - t0) / 60:.1f} min", flush=True)
    if a.dry_run:
        return 0
    rows = collect(a.out, rungs)
    if not rows:
        print("no finished rung", file=sys.stderr)
        return 1
    write(report(rows), a.name)
    print((RESULTS / f"{a.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
