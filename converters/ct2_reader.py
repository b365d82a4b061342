"""Read a CTranslate2 ``model.bin`` (spec format version >= 3) into numpy arrays.

Layout (little-endian): u32 version; string name; u32 revision; u32 n_variables; per
variable: string name, u8 rank, rank x u32 dims, u8 dtype, u32 n_bytes, raw bytes; then
u32 n_aliases and (alias, target) string pairs. A string is u16 length (incl. NUL) + bytes.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mlx_bald.errors import ModelFormatError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 = bf16


class _Reader:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ModelFormatError(
                f"{self.path}: truncated CTranslate2 model (needs byte {self.pos + n:,}, "
                f"file has {len(self.buf):,}); delete it and fetch again")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        return bytes(self.take(n)).rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a CT2 model.bin as numpy arrays (aliases resolved to copies' names)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e}") from e
    r = _Reader(memoryview(data), path)
    version = r.u32()
    if not 3 <= version <= 10:
        raise ModelFormatError(f"{path}: not a CTranslate2 model.bin (format version {version})")
    r.string()  # spec name
    r.u32()  # revision
    out: dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.string()
        dims = [r.u32() for _ in range(r.u8())]
        code = r.u8()
        nbytes = r.u32()
        raw = r.take(nbytes)
        if code == 5:  # bfloat16: widen to float32 via the high half of the bits
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif code in _DTYPES:
            arr = np.frombuffer(raw, dtype=_DTYPES[code])
        else:
            raise ModelFormatError(f"{path}: variable {name!r} has unknown dtype code {code}")
        expected = int(np.prod(dims)) if dims else 1
        if arr.size != expected:
            raise ModelFormatError(f"{path}: variable {name!r} has {arr.size} values for shape {dims}")
        out[name] = arr.reshape(dims) if dims else arr.reshape(())
    for _ in range(r.u32()):
        alias, target = r.string(), r.string()
        if target in out:
            out[alias] = out[target]
    return out
