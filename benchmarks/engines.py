"""The engines the harness times, behind one small interface:

- ``MLXEngine``: an MLX Whisper (mlx-bald's modules via ``mlx_bald.load``, or stock
  mlx-whisper's own ``Whisper``); decoding uses the model's kv-cache path
  ``model.decoder(tokens, audio_features, kv_cache)`` as mlx-whisper's decoding does, and
  transcription is mlx-whisper's ``transcribe`` (unchanged) driving the model.
- ``FasterWhisperEngine``: faster-whisper / CTranslate2 int8 on the CPU, the CPU peer
  (optional: ``available()`` says whether it can be imported).

Every timed method returns wall seconds and blocks until the work is done (``mx.eval``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import mlx_bald  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx

SAMPLE_RATE = 16_000
WINDOW = 30 * SAMPLE_RATE


def window_mel(audio: np.ndarray, n_mels: int) -> mx.array:
    """Log-mel of the first 30 s window, [3000, n_mels] (as mlx-whisper's transcribe cuts it)."""
    from mlx_whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim

    mel = log_mel_spectrogram(mx.array(audio[:WINDOW]), n_mels=n_mels, padding=WINDOW)
    return pad_or_trim(mel[:N_FRAMES], N_FRAMES, axis=-2)


def prompt_tokens(n_vocab: int) -> list[int]:
    """<|startoftranscript|>(<|en|><|transcribe|>)<|notimestamps|> for the model's vocabulary."""
    from mlx_bald.vocab import tokenizer_for

    tok = tokenizer_for(n_vocab, "en", "transcribe")
    return list(tok.sot_sequence_including_notimestamps)


def eot_token(n_vocab: int) -> int:
    return 50257 if n_vocab >= 51865 else 50256


class MLXEngine:
    """An MLX model: ``impl`` is "mlx-bald" (our modules) or "mlx-whisper" (its own Whisper)."""

    def __init__(self, folder: Path, impl: str = "mlx-bald", dtype: mx.Dtype | None = None):
        from mlx_bald.transcribe import default_dtype

        self.folder, self.impl = Path(folder), impl
        self.dtype = dtype or default_dtype()
        if impl == "mlx-bald":
            from mlx_bald.load import load_model
            self.model = load_model(self.folder, dtype=self.dtype)
        elif impl == "mlx-whisper":
            from mlx_whisper.load_models import load_model
            self.model = load_model(str(self.folder), dtype=self.dtype)
        else:
            raise ValueError(f"unknown MLX implementation {impl!r}")
        self.dims = self.model.dims
        self.prompt = prompt_tokens(self.dims.n_vocab)

    # ---- sizes -------------------------------------------------------------------------
    def param_count(self) -> int:
        from mlx.utils import tree_flatten
        return sum(v.size for k, v in tree_flatten(self.model.parameters()) if k != "alignment_heads")

    def resident_bytes(self) -> int:
        from mlx.utils import tree_flatten
        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    # ---- timed pieces -------------------------------------------------------------------
    def mel(self, audio: np.ndarray) -> mx.array:
        """Log-mel of the first 30 s window, [1, 3000, n_mels] (as mlx-whisper's transcribe)."""
        return window_mel(audio, self.dims.n_mels)[None].astype(self.dtype)

    def encode(self, mel: mx.array) -> tuple[float, mx.array]:
        t0 = time.perf_counter()
        features = self.model.embed_audio(mel)
        mx.eval(features)
        return time.perf_counter() - t0, features

    def decode(self, features: mx.array, batch: int, n_tokens: int) -> tuple[float, int, float | None]:
        """Greedy generation of exactly ``n_tokens`` per sequence (end-of-text suppressed so
        that every model does the same work), ``batch`` sequences on ``features`` [1 or B, ...].
        Returns (wall seconds, tokens per sequence, median seconds of a one-token step)."""
        if features.shape[0] != batch:
            features = mx.repeat(features[:1], batch, axis=0)
            mx.eval(features)
        eot = eot_token(self.dims.n_vocab)
        tokens = mx.array([self.prompt] * batch)
        t0 = time.perf_counter()
        logits, cache, _ = self.model.decoder(tokens, features, None)
        steps = []
        for i in range(n_tokens):
            last = logits[:, -1]
            nxt = mx.argmax(mx.where(mx.arange(last.shape[-1]) == eot, -mx.inf, last), axis=-1)
            if i == n_tokens - 1:
                mx.eval(nxt)
                break
            t_step = time.perf_counter()
            logits, cache, _ = self.model.decoder(nxt[:, None], features, cache)
            mx.eval(logits)  # the next token depends on this one, as in real decoding
            steps.append(time.perf_counter() - t_step)
        return time.perf_counter() - t0, n_tokens, float(np.median(steps)) if steps else None

    def profile_step(self, features: mx.array, batch: int, position: int = 132,
                     repeats: int = 7) -> dict[str, float] | None:
        """Median ms of each part of one decode step, run eagerly part by part on the real
        cross-attention cache (mlx-bald modules only; None if their internals differ)."""
        dec = self.model.decoder
        try:
            if features.shape[0] != batch:
                features = mx.repeat(features[:1], batch, axis=0)
            cache = dec.new_cache(features, batch)
            mx.eval(cache)
            x = mx.random.normal((batch, 1, self.dims.n_text_state)).astype(self.dtype)
            offset = mx.array([position], dtype=mx.int32)

            def self_attn(i, block):
                a, y = block.attn, block.attn_ln(x)
                k, v = a.project_kv(y)
                keys = mx.slice_update(cache.self_k[i], k, offset, axes=(2,))
                values = mx.slice_update(cache.self_v[i], v, offset, axes=(2,))
                return a.attend(a.project_q(y), keys, values, kv_len=offset + 1)[0]

            def cross_attn(i, block):
                c = block.cross_attn
                return c.attend(c.project_q(block.cross_attn_ln(x)), cache.cross_k[i], cache.cross_v[i])[0]

            parts = {"self-attention": lambda: [self_attn(i, b) for i, b in enumerate(dec.blocks)],
                     "cross-attention": lambda: [cross_attn(i, b) for i, b in enumerate(dec.blocks)],
                     "MLP": lambda: [b.mlp(x) for b in dec.blocks],
                     "logits (tied embedding)": lambda: dec.project_logits(dec.ln(x))}
            out = {}
            for name, fn in parts.items():
                mx.eval(fn())
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    mx.eval(fn())
                    times.append(time.perf_counter() - t0)
                out[name] = 1e3 * float(np.median(times))
            return out
        except (AttributeError, TypeError, ValueError):
            return None

    def transcribe(self, audio: np.ndarray, language: str = "en", **options) -> tuple[float, str, int]:
        """mlx-whisper's transcribe on this model, greedy: (seconds, text, generated tokens,
        timestamp tokens included)."""
        import mlx_whisper
        from mlx_whisper.transcribe import ModelHolder

        key = f"mlx-bald-bench:{id(self.model)}"
        ModelHolder.model, ModelHolder.model_path = self.model, key
        lang = {"language": language} if self.model.is_multilingual else {}
        t0 = time.perf_counter()
        out = mlx_whisper.transcribe(audio.astype(np.float32), path_or_hf_repo=key,
                                     fp16=self.dtype == mx.float16, temperature=0.0,
                                     condition_on_previous_text=False, verbose=None,
                                     **lang, **options)
        dt = time.perf_counter() - t0
        return dt, out["text"].strip(), sum(len(s["tokens"]) for s in out["segments"])

    def matched_e2e(self, audio: np.ndarray, n_tokens: int) -> tuple[float, float]:
        """Mel + encoder + greedy ``n_tokens`` on one clip: (total seconds, encoder seconds)."""
        t0 = time.perf_counter()
        mel = self.mel(audio)
        mx.eval(mel)
        t_enc, features = self.encode(mel)
        self.decode(features, 1, max(1, n_tokens))
        return time.perf_counter() - t0, t_enc


# ---- faster-whisper (CTranslate2) -----------------------------------------------------
def faster_whisper_available() -> str | None:
    """None if importable, else the reason it is not."""
    try:
        import ctranslate2  # noqa: F401
        import faster_whisper  # noqa: F401
    except ImportError as e:
        return f"faster-whisper not installed ({e.name}); pip install faster-whisper"
    return None


def faster_whisper_folder(ct2_folder: Path, out: Path) -> Path:
    """A folder CTranslate2 loads: the registry model.bin/config.json/tokenizer.json linked
    in, plus the vocabulary.json CTranslate2 wants (ids in order, from tokenizer.json)."""
    if (out / "vocabulary.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        target = out / name
        if not target.exists():
            try:
                target.symlink_to((ct2_folder / name).resolve())
            except OSError:
                import shutil
                shutil.copy2(ct2_folder / name, target)
    tok = json.loads((ct2_folder / "tokenizer.json").read_text())
    ids = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok.get("added_tokens", [])}}
    vocab = [""] * (max(ids.values()) + 1)
    for piece, i in ids.items():
        vocab[i] = piece
    tmp = out / "vocabulary.json.partial"
    tmp.write_text(json.dumps(vocab))
    tmp.replace(out / "vocabulary.json")
    return out


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class FasterWhisperEngine:
    """faster-whisper base on the CPU in int8 (its usual CPU setting), all cores."""

    def __init__(self, folder: Path, n_vocab: int, compute_type: str = "int8"):
        import ctranslate2
        from faster_whisper import WhisperModel

        self._ct2 = ctranslate2
        self.folder = Path(folder)
        self.compute_type = compute_type
        rss0 = _rss_kb("VmRSS")
        self.fw = WhisperModel(str(self.folder), device="cpu", compute_type=compute_type,
                               cpu_threads=os.cpu_count() or 0)
        self.load_rss_bytes = max(0, _rss_kb("VmRSS") - rss0) * 1024
        self.n_vocab = n_vocab
        self.prompt = prompt_tokens(n_vocab)

    def disk_bytes(self) -> int:
        return (self.folder / "model.bin").stat().st_size

    def mel(self, audio: np.ndarray):
        feats = self.fw.feature_extractor(np.pad(audio[:WINDOW], (0, max(0, WINDOW - len(audio)))))
        return self._ct2.StorageView.from_array(np.ascontiguousarray(feats[None, :, :3000], np.float32))

    def encode(self, mel) -> tuple[float, object]:
        t0 = time.perf_counter()
        out = self.fw.model.encode(mel, to_cpu=True)
        return time.perf_counter() - t0, out

    def decode(self, features, batch: int, n_tokens: int) -> tuple[float, int, None]:
        """As MLXEngine.decode; one ``generate`` call, so no per-step times."""
        arr = np.array(features)
        feats = self._ct2.StorageView.from_array(np.ascontiguousarray(np.repeat(arr[:1], batch, 0)))
        t0 = time.perf_counter()
        # CTranslate2's Whisper generates at most max_length / 2 tokens
        res = self.fw.model.generate(feats, [self.prompt] * batch, beam_size=1, max_length=2 * n_tokens,
                                     suppress_tokens=[eot_token(self.n_vocab)], suppress_blank=False)
        dt = time.perf_counter() - t0
        return dt, min(len(r.sequences_ids[0]) for r in res), None

    def transcribe(self, audio: np.ndarray, language: str = "en", **options) -> tuple[float, str, int]:
        extra = {"max_new_tokens": options["sample_len"]} if "sample_len" in options else {}
        t0 = time.perf_counter()
        segments, _ = self.fw.transcribe(audio.astype(np.float32), language=language, beam_size=1,
                                         temperature=0.0, condition_on_previous_text=False,
                                         vad_filter=False, **extra)
        segments = list(segments)  # the generator does the work
        dt = time.perf_counter() - t0
        return dt, " ".join(s.text.strip() for s in segments), sum(len(s.tokens) for s in segments)

    def matched_e2e(self, audio: np.ndarray, n_tokens: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        mel = self.mel(audio)
        t_enc, features = self.encode(mel)
        self.decode(features, 1, max(1, n_tokens))
        return time.perf_counter() - t0, t_enc

    def peak_rss_during(self, fn) -> int:
        """Peak resident-set growth (bytes) while ``fn`` runs, plus the model's load growth."""
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        before = _rss_kb("VmRSS")
        fn()
        return self.load_rss_bytes + max(0, _rss_kb("VmHWM") - before) * 1024
