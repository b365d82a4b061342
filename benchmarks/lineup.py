"""Who runs in a benchmark: the run's settings, the models (stock, compressed shapes, trained
folders, the two stock peers) with the engine that runs each, and the machine it runs on."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx

from benchmarks import variants
from benchmarks.engines import (FasterWhisperEngine, MLXEngine, faster_whisper_available,
                                faster_whisper_folder)


@dataclass
class BenchConfig:
    out: Path
    quick: bool = False
    trained: list[str] = field(default_factory=list)  # folders/names, "label=path" allowed
    tokens: int = 256
    batches: tuple[int, ...] = (1, 10)
    repeats: int = 2
    e2e_repeats: int = 1
    mlx_whisper_repeats: int = 1  # stock mlx-whisper decodes ~5x slower: fewer rounds by default
    sets: tuple[str, ...] = ("librivox",)
    set_limit: int | None = None
    chip: str = "M1"
    faster_whisper: bool = True
    mlx_whisper: bool = True
    drafts: list[str] = field(default_factory=list)  # extra drafts for speculative rows, "label=path" allowed
    speculative: bool = True
    log: bool = True


@dataclass
class Entry:
    key: str          # short id used in tables
    label: str
    engine: str       # mlx-bald | mlx-whisper | faster-whisper
    folder: Path
    weights: str      # real | untrained | trained
    dims: dict
    spec: object
    runner: object = None
    record: dict = field(default_factory=dict)


def machine_info() -> dict:
    import importlib.metadata as md

    from mlx_bald._blas import blas_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        if sys.platform == "darwin":
            import subprocess
            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True).stdout.strip() or cpu

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    cuda = hasattr(mx, "cuda") and mx.cuda.is_available()
    gpu = "metal" if mx.metal.is_available() else "cuda" if cuda else None
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "mlx": version("mlx"), "mlx_whisper": version("mlx-whisper"),
            "faster_whisper": version("faster-whisper"), "ctranslate2": version("ctranslate2"),
            "mlx_device": str(mx.default_device()), "mlx_gpu_backend": gpu, "blas": blas_info(),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# ---- which models ----------------------------------------------------------------------
def build_entries(cfg: BenchConfig, skipped: list[dict]) -> list[Entry]:
    from mlx_bald.hub import resolve_model
    from mlx_bald.paths import cache_dir

    root = cache_dir() / "bench"
    if cfg.quick:
        base = variants.random_stock_folder(root / "quick-random-base")
        recipes, tiny, w_base = variants.QUICK_RECIPES, None, "untrained"
    else:
        base, recipes, w_base = resolve_model("whisper-base", "mlx"), variants.RECIPES, "real"
        tiny = resolve_model("whisper-tiny.en", "mlx")

    def entry(key, label, engine, folder, weights, about) -> Entry:
        e = Entry(key, label, engine, Path(folder), weights, variants.dims_of(folder),
                  variants.spec_of(folder))
        e.record["about"] = about
        return e

    kind = "random weights (quick mode)" if cfg.quick else "real OpenAI weights"
    out = [entry("base", "base (mlx-bald)", "mlx-bald", base, w_base,
                 f"Whisper-base, {kind}, in mlx-bald's modules")]
    head = shortlist_head(cfg.quick)
    out.append(entry("base+shortlist", f"base + shortlist {head.rank}:{head.top} (mlx-bald)", "mlx-bald",
                     variants.cached_shortlist(base, head, root), w_base,
                     f"Whisper-base, {kind}, with the shortlist output head (R={head.rank}, N={head.top}; "
                     f"no training)"))
    for name, recipe in recipes.items():
        folder = variants.cached_variant(base, name, recipe, root)
        out.append(entry(name, f"{name} (untrained)", "mlx-bald", folder, "untrained",
                         _variant_about(recipe)))
    if tiny is not None:
        out.append(entry("tiny.en", "tiny.en (mlx-bald)", "mlx-bald", tiny, "real",
                         "Whisper-tiny.en, real OpenAI weights, in mlx-bald's modules"))
    for item in cfg.trained:
        name, folder = labelled_model(item)
        out.append(entry(f"trained:{name}", f"{name} (trained)", "mlx-bald", folder, "trained",
                         f"trained model folder {folder}, compression: {variants.spec_of(folder).recipe}"))
    if cfg.mlx_whisper:
        out.append(entry("mlx-whisper base", "base via mlx-whisper", "mlx-whisper", base, w_base,
                         f"Whisper-base, {kind}, in mlx-whisper's own Whisper class (stock)"))
    if cfg.faster_whisper and not cfg.quick:
        why = faster_whisper_available()
        if why is None:
            ct2 = faster_whisper_folder(base.parent / "ct2", root / "faster-whisper-base")
            e = entry("faster-whisper base", "base via faster-whisper int8", "faster-whisper", base,
                      "real", "Whisper-base, the same real weights, faster-whisper / CTranslate2 "
                              "int8 on the CPU, all cores (the CPU peer)")
            e.folder = ct2
            out.append(e)
        else:
            skipped.append({"model": "faster-whisper base", "reason": why})
    elif cfg.quick:
        skipped.append({"model": "faster-whisper base", "reason": "not run in --quick mode"})
    return out


def labelled_model(item: str) -> tuple[str, Path]:
    """``[LABEL=]MODEL`` (--model, --draft-model) -> (label, MLX folder); label default: the name."""
    from mlx_bald.hub import resolve_model

    label, _, path = item.rpartition("=")
    return label or Path(path).name, resolve_model(path, "mlx")


def shortlist_head(quick: bool):
    """The head the bench measures: the converter's default (a small one on quick's tiny model)."""
    from converters.shortlist_head import DEFAULT_RANK, DEFAULT_TOP
    from mlx_bald.spec import ShortlistHead

    return ShortlistHead(rank=16, top=64) if quick else ShortlistHead(DEFAULT_RANK, DEFAULT_TOP)


def _variant_about(recipe: tuple) -> str:
    merge, emb, twin = recipe
    parts = ["decoder pairs merged (weighted average) into 3 layers" if merge else ""]
    parts += [f"rank-{emb} factored embedding (SVD)"] if emb else []
    parts += [f"rank-{twin} product-twin attention in every attention module (per-head SVD)"] if twin else []
    return "Whisper-base shape with " + " + ".join(p for p in parts if p) + "; UNTRAINED weights: speed only"


def load_runner(e: Entry):
    if e.engine == "faster-whisper":
        return FasterWhisperEngine(e.folder, e.dims["n_vocab"])
    return MLXEngine(e.folder, impl=e.engine)
