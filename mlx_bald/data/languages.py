"""Language codes as Whisper knows them (``mlx_whisper.tokenizer.LANGUAGES``)."""
from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    module = sys.modules.get("mlx_whisper.tokenizer")
    if module is None:
        # Load tokenizer.py alone: mlx_whisper/__init__ imports mlx, and with it OpenBLAS, which
        # must not load before torch (see mlx_bald._blas); the torch engine reads sets too.
        package = importlib.util.find_spec("mlx_whisper")
        path = f"{package.submodule_search_locations[0]}/tokenizer.py"
        spec = importlib.util.spec_from_file_location("_mlx_bald_whisper_languages", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.LANGUAGES, module.TO_LANGUAGE_CODE


def language_code(value: str) -> str | None:
    """Whisper's code for a code ("cs"), a name ("Czech") or a locale ("cs-CZ", "pt_BR"); None if unknown."""
    codes, names = _tables()
    v = value.strip().lower()
    base = v.replace("_", "-").split("-")[0]
    for candidate in (v, base):
        if candidate in codes:
            return candidate
        if candidate in names:
            return names[candidate]
    return None
