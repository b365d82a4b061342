"""``mlx-bald transcribe``: files in, text or subtitles out (mlx_whisper's flags and writers).

With no --output-dir / --output-format the transcript goes to stdout and everything else
(progress, per-file errors, the summary line) to stderr, so ``mlx-bald transcribe x.wav > x.txt``
works. A file that cannot be read or transcribed is reported and skipped; the exit status is 1
if any file failed.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from mlx_bald.cli.arg_types import (nonneg_float, number_list, open_fraction, optional_float, optional_fraction,
                                    optional_nonneg_float, optional_positive_float, positive_int)
from mlx_bald.cli.decode_args import (SHORT_CONTEXT, add_beam_args, add_draft_arg, add_short_context_arg,
                                      beam_options)

FORMATS = ["txt", "vtt", "srt", "tsv", "json", "all"]
_WRITER_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _language(text: str) -> str | None:
    from mlx_whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    v = text.strip().lower()
    if v in ("", "none", "auto"):
        return None
    if v in LANGUAGES:
        return v
    if v in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[v]
    raise argparse.ArgumentTypeError(f"unknown language {text!r} (use a code such as en, cs, de)")


def _clip_timestamps(text: str) -> str:
    """'start,end,start,end,...' seconds (each >= 0), kept as text for mlx-whisper."""
    number_list(nonneg_float)(text)
    return text


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files",
        description="Transcribe audio files with an MLX Whisper model (mlx-bald compressed or "
                    "stock). Without --output-dir/--output-format the text is printed.")
    p.add_argument("audio", nargs="*", metavar="FILE", help="audio files ('-' reads stdin)")
    p.add_argument("--example", action="store_true",
                   help="transcribe the bundled LibriVox example clip")
    p.add_argument("--model", default=None,
                   help="model name or folder (default: $MLX_BALD_MODEL, else whisper-base-bald once built by `mlx-bald compress --general`, else whisper-base)")
    p.add_argument("--language", type=_language, default=None,
                   help="spoken language (code or name); default: detect")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    p.add_argument("--output-format", "-f", choices=FORMATS, default=None,
                   help="write files in this format (default txt when --output-dir is given)")
    p.add_argument("--output-dir", "-o", default=None,
                   help="directory for output files (default . when --output-format is given)")
    p.add_argument("--output-name", default=None,
                   help="output file name without extension (one input file only)")
    p.add_argument("--word-timestamps", type=_bool, nargs="?", const=True, default=False,
                   help="word-level timestamps (subtitles per word group)")
    p.add_argument("--initial-prompt", default=None, help="text to condition the first window")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                   help="decode the 30 s windows of all files B at a time through one kv cache (faster "
                        "on many files or long audio; each window is one segment, decoded without "
                        "timestamp tokens or previous-text conditioning, as faster-whisper's batched pipeline)")
    p.add_argument("--vad", action="store_true",
                   help="skip silence: Silero VAD (onnxruntime) cuts the audio into speech chunks of at most "
                        "30 s, decoded as with --batch-size (default 8)")
    p.add_argument("--vad-threshold", type=open_fraction, default=None,
                   help="with --vad: speech probability that opens a chunk, 0 < x < 1 (default: mlx_bald.vad's 0.5)")
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="sampling temperature")
    add_beam_args(p)
    add_draft_arg(p)
    add_short_context_arg(p)
    p.add_argument("--temperature-increment-on-fallback", type=optional_nonneg_float, default=0.2,
                   help="raise the temperature by this much when decoding fails (None: never)")
    p.add_argument("--verbose", type=_bool, nargs="?", const=True, default=False,
                   help="print segments as they are decoded (to stderr when text goes to stdout)")
    p.add_argument("--condition-on-previous-text", type=_bool, default=True)
    p.add_argument("--compression-ratio-threshold", type=optional_positive_float, default=2.4)
    p.add_argument("--logprob-threshold", type=optional_float, default=-1.0)
    p.add_argument("--no-speech-threshold", type=optional_fraction, default=0.6)
    p.add_argument("--clip-timestamps", type=_clip_timestamps, default="0",
                   help="start,end,start,end,... seconds to transcribe")
    p.add_argument("--hallucination-silence-threshold", type=optional_positive_float, default=None)
    p.add_argument("--highlight-words", type=_bool, nargs="?", const=True, default=False,
                   help="underline each word as spoken in srt/vtt (needs --word-timestamps)")
    p.add_argument("--max-line-width", type=positive_int, default=None)
    p.add_argument("--max-line-count", type=positive_int, default=None)
    p.add_argument("--max-words-per-line", type=positive_int, default=None)
    return p


def _temperatures(args) -> float | tuple[float, ...]:
    step = args.temperature_increment_on_fallback
    if not step:
        return args.temperature
    temps, t = [], args.temperature
    while t <= 1.0 + 1e-6:
        temps.append(round(t, 6))
        t += step
    return tuple(temps) or args.temperature


def _options(args) -> dict:
    return {
        "language": args.language, "task": args.task, "temperature": _temperatures(args),
        "initial_prompt": args.initial_prompt, "word_timestamps": args.word_timestamps,
        "condition_on_previous_text": args.condition_on_previous_text,
        "compression_ratio_threshold": args.compression_ratio_threshold,
        "logprob_threshold": args.logprob_threshold,
        "no_speech_threshold": args.no_speech_threshold,
        "clip_timestamps": args.clip_timestamps,
        "hallucination_silence_threshold": args.hallucination_silence_threshold,
        "beam_size": args.beam_size, "patience": args.patience, "length_penalty": args.length_penalty,
        "short_context": SHORT_CONTEXT[args.short_context],
    }


def _inputs(args) -> list[str]:
    from mlx_bald.errors import MlxBaldError

    files = list(args.audio)
    if args.example:
        from mlx_bald.data.librivox import example_clip

        files.insert(0, str(example_clip().path))
    if not files:
        raise MlxBaldError("no input: give audio FILEs, '-' for stdin, or --example")
    if args.output_name and len(files) > 1:
        raise MlxBaldError("--output-name needs exactly one input file")
    beam_options(args)  # flags that do not fit together stop here, before any file
    if args.vad_threshold is not None and not args.vad:
        raise MlxBaldError("--vad-threshold needs --vad")
    if args.batch_size is not None or args.vad:
        clashing = [flag for flag, on in (("--word-timestamps", args.word_timestamps),
                                          ("--clip-timestamps", args.clip_timestamps not in ("0", "")),
                                          ("--hallucination-silence-threshold", args.hallucination_silence_threshold))
                    if on]
        if clashing:
            raise MlxBaldError(f"{clashing[0]} needs the one-by-one decoder: drop --batch-size/--vad")
    if not args.word_timestamps:
        for opt in _WRITER_OPTIONS:
            if getattr(args, opt):
                raise MlxBaldError(f"--{opt.replace('_', '-')} requires --word-timestamps")
    return files


def writable_dir(folder: Path) -> Path:
    """``folder``, created if needed, after a real test write; else one clear error."""
    import tempfile

    from mlx_bald.errors import MlxBaldError
    from mlx_bald.fsutil import refuse_file

    refuse_file(folder, "--output-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise MlxBaldError(f"cannot write to --output-dir {folder}: {e.strerror or e}") from None
    return folder


def _output_name(args, path: str, used: set[str]) -> str:
    name = args.output_name or ("stdin" if path == "-" else Path(path).stem)
    base, n = name, 2
    while name in used:  # two inputs with the same stem must not overwrite each other
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def _load(path: str):
    """A file's samples, or None after saying why (the other files go on)."""
    from tqdm import tqdm

    from mlx_bald.audio import load_audio
    from mlx_bald.errors import MlxBaldError

    try:
        return load_audio(sys.stdin.buffer.read() if path == "-" else path, name="stdin" if path == "-" else path)
    except MlxBaldError as e:
        tqdm.write(f"mlx-bald: error: {e}", file=sys.stderr)
        return None


def _decode_one_by_one(files, model, options, verbose, quiet_stdout):
    """(path, audio, result) per file through mlx-whisper's transcribe; failures are reported, skipped."""
    from tqdm import tqdm

    from mlx_bald.errors import MlxBaldError
    from mlx_bald.transcribe import transcribe

    for path in files:
        audio = _load(path)
        if audio is None:
            continue
        try:
            with quiet_stdout:
                result = transcribe(audio, model=model, verbose=verbose, **options)
        except MlxBaldError as e:
            tqdm.write(f"mlx-bald: error: {e}", file=sys.stderr)
            continue
        except Exception as e:  # keep going with the other files; say what broke
            tqdm.write(f"mlx-bald: error: {path}: transcription failed "
                       f"({type(e).__name__}: {e})", file=sys.stderr)
            continue
        yield path, audio, result


def _decode_batched(args, files, model, options):
    """(path, audio, result) per file: every file's chunks (30 s windows, or speech chunks with
    --vad) decoded --batch-size at a time (mlx_bald.batched)."""
    from mlx_bald.batched import OPTIONS, transcribe_many
    from mlx_bald.errors import MlxBaldError

    loaded = [(path, a) for path in files if (a := _load(path)) is not None]
    if not loaded:
        return
    audios = [a for _, a in loaded]
    spans = None
    if args.vad:
        from mlx_bald.vad import vad_spans

        spans = vad_spans(audios, **({} if args.vad_threshold is None else {"threshold": args.vad_threshold}))
    try:
        results = transcribe_many(audios, model, batch_size=args.batch_size or 8, spans=spans,
                                  **{k: options[k] for k in OPTIONS})
    except MlxBaldError:
        raise
    except Exception as e:  # one batch holds every file: say what broke, no traceback
        raise MlxBaldError(f"batched transcription failed ({type(e).__name__}: {e})") from None
    for (path, audio), result in zip(loaded, results):
        yield path, audio, result


def run(args) -> int:
    files = _inputs(args)  # usage errors before the slow imports
    from mlx_whisper.writers import get_writer
    from tqdm import tqdm

    from mlx_bald.audio import SAMPLE_RATE
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.hub import resolve_model
    from mlx_bald.transcribe import get_model

    to_stdout = args.output_dir is None and args.output_format is None
    if args.model is None:
        from mlx_bald.hub import default_model
        args.model = default_model()
    model = str(resolve_model(args.model))  # an unknown model stops here, before any file
    draft = str(resolve_model(args.draft_model)) if args.draft_model else None
    decoder = get_model(model, draft=draft)  # so does a broken one (or a draft that does not fit): once
    options = {**_options(args), "draft_model": draft}
    if args.short_context == "on" and getattr(decoder, "target", decoder).spec.short_context_s is None:
        from mlx_bald.short_context import use_short_context
        use_short_context(decoder, 1, force=True)  # refuses an untuned model once, before any file
    writer = writer_kwargs = out_dir = None
    if not to_stdout:
        out_dir = writable_dir(Path(args.output_dir or "."))  # before any decoding
        writer = get_writer(args.output_format or "txt", str(out_dir))
        writer_kwargs = {k: getattr(args, k) for k in _WRITER_OPTIONS}
    # mlx_whisper: verbose=True prints segments (to stdout), False shows a frames bar, None nothing.
    single_tty = len(files) == 1 and sys.stderr.isatty()
    verbose = True if args.verbose else (False if single_tty else None)
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()

    used: set[str] = set()
    done, audio_seconds, start = 0, 0.0, time.perf_counter()
    batched = args.batch_size is not None or args.vad
    decoded = _decode_batched(args, files, model, options) if batched else \
        _decode_one_by_one(files, model, options, verbose, quiet_stdout)
    bar = tqdm(decoded, total=len(files), unit="file", file=sys.stderr, leave=False,
               disable=len(files) < 2 or not sys.stderr.isatty())
    for path, audio, result in bar:
        done += 1
        audio_seconds += len(audio) / SAMPLE_RATE
        if to_stdout:
            print(result["text"].strip(), flush=True)
        else:
            name = _output_name(args, path, used)
            try:
                writer(result, name, **writer_kwargs)
            except OSError as e:  # e.g. the disk filled up: the files already written stay
                raise MlxBaldError(f"cannot write {out_dir / name}: {e.strerror or e}") from None
            ext = "{txt,vtt,srt,tsv,json}" if args.output_format == "all" else \
                (args.output_format or "txt")
            tqdm.write(f"{path} -> {out_dir / name}.{ext}", file=sys.stderr)
    bar.close()

    wall = time.perf_counter() - start
    rtf = f"{wall / audio_seconds:.2f}" if audio_seconds else "n/a"
    print(f"mlx-bald: {done}/{len(files)} files transcribed, {audio_seconds:.1f} s of audio "
          f"in {wall:.1f} s (real-time factor {rtf}) with {args.model}", file=sys.stderr)
    if draft:
        print(f"mlx-bald: {decoder.stats.summary()}", file=sys.stderr)
    return 0 if done == len(files) else 1
