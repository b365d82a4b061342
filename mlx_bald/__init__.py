"""mlx-bald: smaller, faster Whisper for Apple silicon.

Importing this package first (before ``mlx``) lets it point MLX's Linux CPU backend at
OpenBLAS, loaded when ``mlx`` is first imported; see ``mlx_bald._blas``.
"""
from ._blas import install_import_hook as _install_import_hook

_install_import_hook()

__version__ = "0.1.0"
