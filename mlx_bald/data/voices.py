"""Three families of English speech synthesis, each from a registry, no system install:
espeak-ng (formant; PyPI ``espeakng-loader``), Flite (CMU's unit/clustergen voices; Debian
``flite``) and Festival (diphone and HTS voices; Debian ``festival`` + ``festvox-*``). On
x86-64 Linux the Debian binaries are unpacked into the cache and run with their own library
path; elsewhere (a Mac) the system's own ``flite`` and ``festival`` are used when installed.

Every voice is deterministic: the same text, voice and stretch give the same samples.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlx_bald.data.tts import VOICES as TTS_VOICES
from mlx_bald.errors import MlxBaldError
from mlx_bald.fetch import apt_fetch, extract_deb
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import data_dir

FLITE_PACKAGES = ("flite", "libflite1")
FESTIVAL_PACKAGES = ("festival", "libestools2.5", "festlex-cmu", "festlex-poslex", "festvox-kallpc16k",
                     "festvox-kdlpc16k", "festvox-us-slt-hts")
ESPEAK_VOICES = TTS_VOICES  # the tts-en set's eight variants
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FAMILIES = {"espeak": ESPEAK_VOICES, "flite": FLITE_VOICES, "festival": FESTIVAL_VOICES}
STRETCHES = (0.85, 0.95, 1.05, 1.2)  # duration factor: < 1 speaks faster
FIXED_RATE = {"cmu_us_slt_arctic_hts"}  # Festival's HTS engine ignores Duration_Stretch (measured)


@dataclass(frozen=True)
class Voice:
    family: str  # espeak | flite | festival
    name: str
    stretch: float = 1.0

    def __str__(self) -> str:
        return f"{self.family}/{self.name}@{self.stretch}"


def _debian_usable() -> bool:
    import platform
    import shutil
    import sys

    return sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("apt-get") is not None


def _tool(name: str, packages: tuple[str, ...]) -> tuple[Path, dict[str, str], Path | None]:
    """(binary, environment, Debian root or None) of ``name``: the Debian packages unpacked under
    ``<cache>/data/voices/<name>`` on x86-64 Linux, else the system's own (e.g. Homebrew's)."""
    import shutil

    if not _debian_usable():
        found = shutil.which(name)
        if not found:
            raise MlxBaldError(f"synthetic English needs {name} on this machine (e.g. `brew install {name}`), "
                               f"or use an x86-64 Linux machine, where it comes from Debian")
        return Path(found), dict(os.environ), None
    root = data_dir() / "voices" / name
    if not (root / "usr").is_dir():
        with atomic_dir(root, overwrite=True) as tmp:
            for package in packages:
                extract_deb(apt_fetch(package), tmp, "usr/")
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"))
    return root / "usr/bin" / name, env, root


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MlxBaldError(f"{what} failed (rc {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-400:]}")


def _read(path: Path) -> np.ndarray:
    from mlx_bald.audio import load_audio

    return load_audio(path)


def _flite(texts: list[str], voice: Voice, tmp: Path) -> list[np.ndarray]:
    flite, env, _ = _tool("flite", FLITE_PACKAGES)
    out = []
    for k, text in enumerate(texts):
        wav = tmp / f"{k}.wav"
        _run([str(flite), "-voice", voice.name, "--setf", f"duration_stretch={voice.stretch}",
              "-t", text, "-o", str(wav)], env, f"flite ({voice})")
        out.append(_read(wav))
    return out


def _espeak_in_child(texts: list[str], name: str, wpm: int) -> list[np.ndarray]:
    from mlx_bald.data.tts import synthesize

    return [synthesize(t, name, wpm) for t in texts]


def _espeak(texts: list[str], voice: Voice) -> list[np.ndarray]:
    """espeak-ng in a fresh child process per call: its output depends on what the process
    spoke before (measured: the same sentence twice in one process differs from sample 328 on;
    in fresh processes it is the same bit for bit), so each window starts from a clean state."""
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_espeak_in_child, texts, voice.name, round(175 / voice.stretch)).result()


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(texts: list[str], voice: Voice, tmp: Path) -> list[np.ndarray]:
    """One Festival process per call: its start-up (loading the voice) costs more than a sentence."""
    festival, env, root = _tool("festival", FESTIVAL_PACKAGES)
    script = [f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {voice.stretch})"]
    script += [f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(t)})) {_scheme_string(str(tmp / f'{k}.wav'))} 'riff)"
               for k, t in enumerate(texts)]
    (tmp / "say.scm").write_text("\n".join(script) + "\n")
    lib = [] if root is None else ["--libdir", str(root / "usr/share/festival"), "--datadir", str(root / "usr/share/festival")]
    _run([str(festival), *lib, "-b", str(tmp / "say.scm")], env, f"festival ({voice})")
    return [_read(tmp / f"{k}.wav") for k in range(len(texts))]


def speak(texts: list[str], voice: Voice) -> list[np.ndarray]:
    """Each text spoken by ``voice``: 16 kHz mono float32, one array per text."""
    if voice.family == "espeak":
        return _espeak(texts, voice)
    if voice.family not in FAMILIES:
        raise MlxBaldError(f"unknown synthesis family {voice.family!r}; choose from {', '.join(FAMILIES)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = (_flite if voice.family == "flite" else _festival)(texts, voice, Path(tmp))
    for t, a in zip(texts, out):
        if a.size == 0 or not np.isfinite(a).all():
            raise MlxBaldError(f"{voice} produced no audio for {t[:40]!r}")
    return out
