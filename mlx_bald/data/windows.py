"""30 s training windows built from pieces, for distillation (never for WER):

- ``synth-en:N``: the first N windows of a fixed, seeded sequence of synthetic English. Window
  i draws (from ``random.Random("synth-en/<seed>/<i>")``) a register of ``prose``, a voice of
  ``voices`` (three families), a speaking rate, a fill of 4-28 s, a start sentence, pauses and a
  gain; it then speaks consecutive sentences of that register. The windows of ``synth-en:1000``
  are the first 1,000 of ``synth-en:4000``, so a data ladder's rungs are nested.
- ``pack:SPEC``: the clips of any set (short prompts) packed into windows of 10-28 s, in a
  seeded order, one language per window, the references joined.

Each window is a 16 kHz wav under ``<cache>/data``, written atomically, and a row of the
folder's ``manifest.jsonl`` (what was spoken, by which voice, the sha1 of its samples), so the
set can be rebuilt and checked bit for bit from the seed and the manifest.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np

from mlx_bald.data.clips import Clip
from mlx_bald.errors import MlxBaldError
from mlx_bald.paths import data_dir

RATE = 16_000
WINDOW_S = 29.5  # what a window may hold: Whisper's 30 s, less a margin for the mel frames
SEED = 0
REGISTER_WEIGHTS = {"narrative": 0.25, "dialogue": 0.15, "speech": 0.2, "numbers": 0.2, "technical": 0.2}
WORDS_PER_S = 2.6  # a planning estimate of the engines' speed at stretch 1 (measured 2.4-2.9)
SYNTH_FILL_S = (4.0, 28.0)
PACK_FILL_S = (10.0, 28.0)
GAP_S = (0.15, 0.7)


def _pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).round().astype("<i2")


def _write(path: Path, pcm: np.ndarray) -> str:
    """Write the wav atomically; return the sha1 of its samples."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), pcm, RATE, format="WAV", subtype="PCM_16")
    tmp.replace(path)
    return hashlib.sha1(pcm.tobytes()).hexdigest()


def _assemble(pieces: list[np.ndarray], gaps: list[float], lead: float, gain: float | None) -> np.ndarray:
    out = [np.zeros(int(lead * RATE), np.float32)]
    for k, piece in enumerate(pieces):
        if k:
            out.append(np.zeros(int(gaps[k - 1] * RATE), np.float32))
        out.append(piece.astype(np.float32))
    audio = np.concatenate(out)
    if gain is not None:  # synthetic speech: a drawn loudness (engines all speak near full scale)
        audio *= gain / max(float(np.abs(audio).max()), 1e-6)
    return _pcm16(audio)


def _read_manifest(path: Path) -> list[dict]:
    from mlx_bald.data.manifest import read_rows

    return [row for _, row in read_rows(path)[1]] if path.is_file() else []


def _write_manifest(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def _clips(root: Path, rows: list[dict], language_of=lambda r: r["language"]) -> list[Clip]:
    return [Clip(id=r["id"], path=root / r["audio"], text=r["text"], language=language_of(r), group=r["group"])
            for r in rows]


# --- synthetic English -----------------------------------------------------------------------

def synth_dir(seed: int = SEED) -> Path:
    return data_dir() / "synth-en" / f"seed-{seed}"


def plan_synth(i: int, pool: dict[str, list[list[str]]], seed: int = SEED) -> dict:
    """What window ``i`` speaks and how: a pure function of (seed, i, the sentence pool)."""
    from mlx_bald.data.voices import FAMILIES, FIXED_RATE, STRETCHES, Voice

    rng = random.Random(f"synth-en/{seed}/{i}")
    register = rng.choices(list(REGISTER_WEIGHTS), weights=list(REGISTER_WEIGHTS.values()))[0]
    family = rng.choice(sorted(FAMILIES))
    name, stretch = rng.choice(FAMILIES[family]), rng.choice(STRETCHES)
    voice = Voice(family, name, 1.0 if name in FIXED_RATE else stretch)
    fill, rows = rng.uniform(*SYNTH_FILL_S), pool[register]
    start, chosen, words = rng.randrange(len(rows)), [], 0
    while words / WORDS_PER_S * voice.stretch < fill and len(chosen) < len(rows):
        chosen.append(rows[(start + len(chosen)) % len(rows)])
        words += len(chosen[-1][1].split())
    gaps = [round(rng.uniform(*GAP_S), 3) for _ in chosen]
    return {"id": f"{i:05d}", "audio": f"wav/{i:05d}.wav", "group": register, "voice": str(voice),
            "voice_parts": [voice.family, voice.name, voice.stretch], "sentences": [s for s, _ in chosen],
            "texts": [t for _, t in chosen], "gaps": gaps, "lead": round(rng.uniform(0.05, 0.6), 3),
            "gain": round(rng.uniform(0.4, 0.95), 3), "language": "en"}


def render_synth(plan: dict) -> tuple[np.ndarray, list[str]]:
    """The window's PCM16 samples and the sentences that fit in WINDOW_S (the plan's estimate
    may overshoot: sentences are dropped from the end). A first sentence longer than a window
    alone leaves the window empty (no samples, no texts)."""
    from mlx_bald.data.voices import Voice, speak

    voice = Voice(*plan["voice_parts"])
    pieces = speak(plan["texts"], voice)
    texts = list(plan["texts"])
    budget = lambda ps: plan["lead"] + sum(len(p) for p in ps) / RATE + sum(plan["gaps"][:len(ps) - 1])  # noqa: E731
    while len(pieces) > 1 and budget(pieces) > WINDOW_S:
        pieces, texts = pieces[:-1], texts[:-1]
    if budget(pieces) > WINDOW_S:
        return np.zeros(0, "<i2"), []  # one sentence longer than a window: the window stays empty
    return _assemble(pieces, plan["gaps"], plan["lead"], plan["gain"]), texts


def load_synth(n: int, seed: int = SEED, progress: bool = True) -> list[Clip]:
    """The first ``n`` synthetic English windows, made on first use: windows not in the
    manifest yet, or whose wav is gone, are rendered from the seed (resumable)."""
    from tqdm.auto import tqdm

    from mlx_bald.data.prose import load_sentences

    if n < 1:
        raise MlxBaldError(f"synth-en needs a window count >= 1 (synth-en:N), got {n}")
    root = synth_dir(seed)
    manifest = root / "manifest.jsonl"
    rows = _read_manifest(manifest)
    todo = [i for i in range(n) if i >= len(rows) or (rows[i]["sha1"] and not (root / rows[i]["audio"]).is_file())]
    if todo:
        pool = load_sentences()
        root.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(tqdm(todo, desc="synthetic English windows", disable=not progress)):
            plan = plan_synth(i, pool, seed)
            pcm, texts = render_synth(plan)
            row = {**plan, "text": "", "sha1": None}  # an empty window keeps its row: row i is window i
            if texts:
                row = {**plan, "texts": texts, "sentences": plan["sentences"][:len(texts)], "text": " ".join(texts),
                       "seconds": round(len(pcm) / RATE, 3), "sha1": _write(root / plan["audio"], pcm)}
            rows[i:i + 1] = [row]
            if k % 25 == 24 or k == len(todo) - 1:
                _write_manifest(manifest, rows)
    return _clips(root, [r for r in rows[:n] if r["sha1"]])


# --- short clips packed ----------------------------------------------------------------------

def plan_packs(clips: list[Clip], spec: str, seed: int = SEED) -> list[dict]:
    """Windows of ``clips`` in a seeded order (one language per window), each filled up to a
    drawn 10-28 s; a clip longer than a window alone is left out."""
    rng = random.Random(f"pack/{spec}/{seed}")
    order = list(range(len(clips)))
    rng.shuffle(order)
    by_lang: dict[str, list[int]] = {}
    for k in order:
        by_lang.setdefault(clips[k].language, []).append(k)
    plans = []
    for lang in sorted(by_lang, key=str):
        members, seconds, fill = [], 0.0, rng.uniform(*PACK_FILL_S)
        for k in by_lang[lang]:
            d = clips[k].seconds
            if d > WINDOW_S - 0.5:
                continue
            gap = rng.uniform(*GAP_S)
            if members and seconds + gap + d > fill:
                plans.append((lang, members))
                members, seconds, fill = [], 0.0, rng.uniform(*PACK_FILL_S)
            seconds += (gap if members else 0.0) + d
            members.append((k, round(gap, 3)))
        if members:
            plans.append((lang, members))
    return [{"id": f"w{w:04d}", "audio": f"wav/w{w:04d}.wav", "language": lang, "group": "packed",
             "clips": [clips[k].id for k, _ in m], "gaps": [g for _, g in m[1:]], "lead": 0.1,
             "text": " ".join(clips[k].text.strip() for k, _ in m)} for w, (lang, m) in enumerate(plans)]


def load_packed(spec: str, clips: list[Clip], seed: int = SEED, progress: bool = True) -> list[Clip]:
    """``spec``'s clips (``clips``, as ``load_set(spec)`` gives them: the caller loads them, so
    this module does not import the set dispatcher) packed into windows (made on first use,
    rebuilt if the set changed)."""
    from tqdm.auto import tqdm

    from mlx_bald.paths import cache_name

    if not clips:
        raise MlxBaldError(f"pack:{spec}: the set has no clips")
    root = data_dir() / "packed" / cache_name(spec) / f"seed-{seed}"
    plans = plan_packs(clips, spec, seed)
    manifest = root / "manifest.jsonl"
    rows = {r["id"]: r for r in _read_manifest(manifest)}
    by_id = {c.id: c for c in clips}
    todo = [p for p in plans if rows.get(p["id"], {}).get("clips") != p["clips"] or not (root / p["audio"]).is_file()]
    for k, p in enumerate(tqdm(todo, desc=f"packing {spec}", disable=not progress or not todo)):
        pcm = _assemble([by_id[c].audio for c in p["clips"]], p["gaps"], p["lead"], None)
        rows[p["id"]] = {**p, "seconds": round(len(pcm) / RATE, 3), "sha1": _write(root / p["audio"], pcm)}
        if k % 25 == 24 or k == len(todo) - 1:
            _write_manifest(manifest, [rows[q["id"]] for q in plans if q["id"] in rows])
    return _clips(root, [rows[p["id"]] for p in plans])
