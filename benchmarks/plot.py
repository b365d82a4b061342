"""Speed-vs-WER Pareto plot (PNG, matplotlib Agg): our models by decoder speed-up over
Whisper-base in the same run (batch 10 by default) against WER on the first set; untrained
speed variants as vertical lines (speed only); the paper's points on a second WER axis."""
from __future__ import annotations

from pathlib import Path

from benchmarks.paper import PAPER


def pareto(r: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = r["protocol"]
    b = f"b{max(pr['batches'])}"
    first_set = pr["sets"][0]
    fig, ax = plt.subplots(figsize=(10, 6.8), dpi=110)
    ax2 = ax.twinx()

    xs_all = [1.0]
    real_pts = []
    for m in r["models"]:
        x = m["speedup"].get("vs base", {}).get(b)
        if x is None:
            continue
        xs_all.append(x)
        t = (m.get("transcribe") or {}).get(first_set)
        if m["weights"] == "untrained" or t is None:
            ax.axvline(x, color="tab:orange", ls=":", lw=1.2)
            ax.text(x, 0.98, f"{m['key']} (untrained: speed only) ", transform=ax.get_xaxis_transform(),
                    va="top", ha="right", rotation=90, fontsize=8, color="tab:orange")
            continue
        marker = {"mlx-bald": "o", "mlx-whisper": "s", "faster-whisper": "D"}[m["engine"]]
        color = "tab:green" if m["weights"] == "trained" else "tab:blue"
        ax.scatter([x], [t["wer"]], marker=marker, s=60, color=color, zorder=3)
        ax.annotate(m["key"], (x, t["wer"]), textcoords="offset points", xytext=(6, 6), fontsize=8.5)
        real_pts.append((x, t["wer"]))

    px = [p["speedup"] for p in PAPER.values() if p["wer"] is not None]
    py = [p["wer"] for p in PAPER.values() if p["wer"] is not None]
    ax2.plot(px, py, "s--", color="tab:red", alpha=0.8, label="paper (M1 Air, Bambara WER, right axis)")
    for name, p in PAPER.items():
        if p["wer"] is not None:
            ax2.annotate(f"paper: {name}", (p["speedup"], p["wer"]), textcoords="offset points",
                         xytext=(-6, 8), ha="right", fontsize=8, color="tab:red")
        else:
            ax.axvline(p["speedup"], color="tab:red", ls="--", lw=1, alpha=0.6)
            ax.text(p["speedup"], 0.02, f"paper: {name} (speed only) ", transform=ax.get_xaxis_transform(),
                    fontsize=8, color="tab:red", va="bottom", ha="right", rotation=90)
        xs_all.append(p["speedup"])

    ax.set_xlim(0, max(xs_all) * 1.25)
    ys = [y for _, y in real_pts]
    ax.set_ylim(0, max(ys + [1.0]) * 1.6)
    ax2.set_ylim(min(py) - 6, max(py) + 4)
    ax.set_xlabel(f"decoder speed-up over Whisper-base in the same run (tokens/s, batch {max(pr['batches'])}, "
                  f"{pr['tokens']} tokens)")
    ax.set_ylabel(f"WER % on {first_set} (ours; real weights only)")
    ax2.set_ylabel("paper WER % (Bambara)", color="tab:red")
    ax.grid(alpha=0.3)
    mi = r["machine"]
    title = "QUICK MODE (random tiny models, not results)" if r["quick"] else "speed vs WER"
    ax.set_title(f"mlx-bald: {title}\n{mi['cpu']} ({mi['cores']} cores), MLX {mi['mlx']} on {mi['mlx_device']}",
                 fontsize=10)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker="o", ls="", color="tab:blue", label="mlx-bald modules, real weights"),
               Line2D([], [], marker="s", ls="", color="tab:blue", label="mlx-whisper (stock)"),
               Line2D([], [], marker="D", ls="", color="tab:blue", label="faster-whisper int8 (CPU peer)"),
               Line2D([], [], marker="o", ls="", color="tab:green", label="trained compressed folder"),
               Line2D([], [], ls=":", color="tab:orange", label="untrained compressed shape (speed only)"),
               Line2D([], [], marker="s", ls="--", color="tab:red", label="paper (right axis)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
