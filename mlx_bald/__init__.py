"""mlx-bald: smaller, faster Whisper for Apple silicon.

Importing this package first (before ``mlx``) lets it point MLX's Linux CPU backend at
OpenBLAS; see ``mlx_bald._blas``.
"""
from ._blas import preload_openblas as _preload_openblas

_preload_openblas()

__version__ = "0.1.0"
