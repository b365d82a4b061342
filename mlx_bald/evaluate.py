"""Corpus WER on real speech. Normalisers: Whisper's English normaliser (with its
British->American spelling map, from the ``whisper-normalizer`` package) for English;
Whisper's basic normaliser (lowercase, punctuation and symbols removed) for other languages.

Decoding: ``greedy`` (temperature 0, the paper tables' setting), ``beam`` (beam search at
temperature 0) or ``fallback`` (how ``mlx-bald transcribe`` decodes by default: a looping or
unlikely hypothesis is re-decoded at rising temperatures; seeded per clip, so a run is reproducible)."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace

import jiwer


def normalizer_for(language: str):
    if language == "en":
        from whisper_normalizer.english import EnglishTextNormalizer

        return "whisper-english", EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer

    return "whisper-basic", BasicTextNormalizer()


def corpus_wer(references: list[str], hypotheses: list[str], language: str) -> tuple[float, str]:
    """WER over the whole corpus (errors summed over clips / reference words), in %."""
    name, norm = normalizer_for(language)
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]  # a reference that normalises to nothing
    out = jiwer.process_words([refs[i] for i in keep], [hyps[i] for i in keep])
    return 100.0 * out.wer, name


@dataclass
class EvalResult:
    model: str
    set: str
    engine: str
    decode: str
    normalizer: str
    wer: float
    n_clips: int
    audio_seconds: float
    wall_seconds: float
    rows: list[dict] = field(default_factory=list)
    draft: dict | None = None  # speculative decoding: the draft and its acceptance

    def to_dict(self) -> dict:
        return asdict(self)


DECODES = ("greedy", "fallback", "beam")


def evaluate(model: str, set_spec: str, engine: str = "mlx", limit: int | None = None,
             progress: bool = True, language: str | None = None, decode: str = "greedy",
             audio_column: str | None = None, text_column: str | None = None,
             beam_size: int = 5, draft_model: str | None = None) -> EvalResult:
    """Corpus WER of ``model`` on ``set_spec`` (any ``load_set`` spec). ``language``, ``audio_column``
    and ``text_column`` go to ``load_set``: they describe a user's manifest or dataset.
    ``decode="beam"``: beam search of ``beam_size`` at temperature 0 (openai-whisper's semantics).
    ``draft_model``: speculative decoding with that draft (mlx engine; the hypotheses are the
    model's own), its acceptance reported in ``draft``."""
    from tqdm import tqdm

    from mlx_bald.data import load_set
    from mlx_bald.errors import MlxBaldError

    if set_spec.startswith(("tts-", "synth-")):
        raise MlxBaldError(f"{set_spec!r} is synthetic speech, for training only: WER is reported on real speech")
    if set_spec.startswith("folder-"):
        raise MlxBaldError(f"{set_spec!r} is unlabelled audio, for training only: it has no references for a WER")
    if decode not in DECODES:
        raise MlxBaldError(f"unknown decode {decode!r} (one of {', '.join(DECODES)})")
    if limit is not None and limit < 1:
        raise MlxBaldError(f"limit must be at least 1 clip, not {limit}")
    if decode == "beam" and beam_size < 1:
        raise MlxBaldError(f"beam_size must be at least 1, not {beam_size}")
    if draft_model is not None and engine != "mlx":
        raise MlxBaldError("--draft-model is for the mlx engine")
    fallback = decode == "fallback"
    beams = beam_size if decode == "beam" else None
    clips = load_set(set_spec, audio_column=audio_column, text_column=text_column, language=language)
    clips = clips[:limit]
    if not clips:
        raise MlxBaldError(f"set {set_spec!r} has no clips")
    languages = sorted({c.language for c in clips})
    if len(languages) > 1:
        raise MlxBaldError(f"set {set_spec!r} mixes languages ({', '.join(languages)}): a WER is per "
                           "language, so evaluate one language at a time")
    lang = languages[0]
    if engine == "mlx":
        import mlx.core as mx

        from mlx_bald.transcribe import get_model, transcribe

        m = get_model(model, draft=draft_model)
        stats_before = replace(m.stats) if draft_model else None
        if not m.is_multilingual and lang != "en":
            from mlx_bald.errors import MlxBaldError
            raise MlxBaldError(f"{model} is English-only; it cannot be evaluated on {lang!r}")

        def run(clip):
            # fallback: mlx-whisper's defaults (temperatures 0..1 by 0.2, compression ratio 2.4, log-prob -1)
            mx.random.seed(0)
            options = {} if fallback else {"temperature": 0.0, "beam_size": beams}
            return transcribe(clip.audio, model, language=lang if m.is_multilingual else None,
                              condition_on_previous_text=False, draft_model=draft_model, **options)["text"]
    elif engine == "torch":
        from mlx_bald.torch_ref import transcribe_torch

        def run(clip):
            return transcribe_torch(clip.audio, model, language=lang, fallback=fallback, num_beams=beams)
    else:
        raise ValueError(f"unknown engine {engine!r} (mlx or torch)")
    rows, t0 = [], time.perf_counter()
    for clip in tqdm(clips, desc=f"{engine} {decode} {model} on {set_spec}", disable=not progress,
                     file=sys.stderr, unit="clip"):
        rows.append({"id": clip.id, "reference": clip.text, "hypothesis": run(clip).strip(),
                     "seconds": round(clip.seconds, 3)})
    wall = time.perf_counter() - t0
    draft = None
    if engine == "mlx" and draft_model is not None:  # this run's share of the pair's counters
        draft = {**m.stats.since(stats_before).to_dict(), "model": str(draft_model)}
    wer, norm = corpus_wer([r["reference"] for r in rows], [r["hypothesis"] for r in rows], lang)
    return EvalResult(model=str(model), set=set_spec, engine=engine, decode=f"beam{beam_size}" if beams else decode, normalizer=norm,
                      wer=round(wer, 2), n_clips=len(rows), audio_seconds=round(sum(r["seconds"] for r in rows), 2),
                      wall_seconds=round(wall, 2), rows=rows, draft=draft)
