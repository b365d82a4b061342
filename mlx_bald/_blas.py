"""Make MLX's CPU backend use OpenBLAS on Linux.

The mlx-cpu wheel links a single-threaded reference BLAS (~10x slower for Whisper's
matmuls). Loading OpenBLAS with RTLD_GLOBAL *before* ``mlx.core`` is imported makes the
dynamic linker resolve MLX's cblas/lapack symbols to it. Set ``MLX_BALD_BLAS=reference``
to opt out, or ``MLX_BALD_OPENBLAS=/path/libopenblas.so.0`` to choose the library.

The load waits for the first ``import mlx``: OpenBLAS loaded globally BEFORE torch
interposes on torch's MKL ``sgemm`` and its threads fight torch's OpenMP pool (a teacher
fine-tune step of ``mlx-bald compress`` took ~3.0 s instead of ~1.1 s on 2 cores), so torch-only work must
never see it.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.abc
import os
import platform
import sys

_loaded: str | None = None
_CANDIDATES = [
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
]


def _find() -> str | None:
    env = os.environ.get("MLX_BALD_OPENBLAS")
    if env:
        return env
    arch = platform.machine()
    for pattern in _CANDIDATES:
        path = pattern.format(arch=arch)
        if os.path.exists(path):
            return path
    return None


def _preload_gfortran() -> None:
    # OpenBLAS needs libgfortran.so.5; the mlx-cpu wheel bundles one if the system has none.
    try:
        ctypes.CDLL("libgfortran.so.5", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    for site in sys.path:
        for lib in glob.glob(os.path.join(site, "mlx_cpu.libs", "libgfortran*.so*")):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def preload_openblas() -> str | None:
    """Load OpenBLAS globally (Linux only). Returns the path loaded, or None."""
    global _loaded
    if _loaded or sys.platform != "linux" or os.environ.get("MLX_BALD_BLAS") == "reference":
        return _loaded
    if "mlx.core" in sys.modules:  # too late: MLX already bound its BLAS symbols
        return None
    path = _find()
    if path is None:
        return None
    try:
        _preload_gfortran()
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    _loaded = path
    return path


class _PreloadBeforeMlx(importlib.abc.MetaPathFinder):
    """Finds nothing itself; loads OpenBLAS the moment ``mlx`` is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "mlx" or name.startswith("mlx."):
            uninstall_import_hook()
            preload_openblas()
        return None


_HOOK = _PreloadBeforeMlx()


def install_import_hook() -> None:
    """Preload OpenBLAS lazily, just before MLX loads (now, if MLX is already importing)."""
    if "mlx.core" in sys.modules or _HOOK in sys.meta_path:
        return
    sys.meta_path.insert(0, _HOOK)


def uninstall_import_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def blas_info() -> str:
    """One line for reports: which BLAS MLX's CPU backend is using."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if _loaded:
        return f"OpenBLAS ({_loaded})"
    return "reference BLAS bundled with mlx-cpu (slow; install libopenblas0-pthread)"
