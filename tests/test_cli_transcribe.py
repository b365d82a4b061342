"""`mlx-bald transcribe`: output formats, stdout mode, bad files, option mapping.

Most tests swap the model for a fake transcriber (mlx_bald.transcribe.transcribe) so they run in
milliseconds; the two slow ones run the real whisper-tiny.en on real LibriVox speech."""
from __future__ import annotations

import io
import os
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from subtitle_check import SubtitleError, parse_srt, parse_vtt
from mlx_bald.cli.main import main

SEGMENTS = [
    {"id": 0, "seek": 0, "start": 0.0, "end": 1.5, "text": " Hello world.", "tokens": [1, 2],
     "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01,
     "words": [{"word": " Hello", "start": 0.0, "end": 0.7, "probability": 0.9},
               {"word": " world.", "start": 0.7, "end": 1.5, "probability": 0.9}]},
    {"id": 1, "seek": 0, "start": 1.5, "end": 3.25, "text": " Second line here.", "tokens": [3],
     "temperature": 0.0, "avg_logprob": -0.3, "compression_ratio": 1.0, "no_speech_prob": 0.02,
     "words": [{"word": " Second", "start": 1.5, "end": 2.0, "probability": 0.8},
               {"word": " line", "start": 2.0, "end": 2.5, "probability": 0.8},
               {"word": " here.", "start": 2.5, "end": 3.25, "probability": 0.8}]},
]
TEXT = " Hello world. Second line here."


class FakeTranscriber:
    """Stands in for mlx_bald.transcribe.transcribe; fails on audio of ``fail_len`` samples."""

    def __init__(self, fail_len: int | None = None) -> None:
        self.calls: list[dict] = []
        self.fail_len = fail_len

    def __call__(self, audio, model=None, **options):
        self.calls.append({"samples": len(audio), "model": model, **options})
        if len(audio) == self.fail_len:
            raise RuntimeError("decoder exploded")
        return {"text": TEXT, "segments": [dict(s) for s in SEGMENTS], "language": "en"}


@pytest.fixture
def fake(monkeypatch):
    import mlx_bald.hub
    import mlx_bald.transcribe

    t = FakeTranscriber()
    monkeypatch.setattr(mlx_bald.transcribe, "transcribe", t)
    from mlx_bald.speculative import DraftStats

    monkeypatch.setattr(mlx_bald.transcribe, "get_model", lambda *a, **k: SimpleNamespace(stats=DraftStats()))
    monkeypatch.setattr(mlx_bald.hub, "resolve_model", lambda name, fmt="mlx": Path(f"/models/{name}"))
    return t


def wav(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path


def test_stdout_mode_prints_only_text(fake, tmp_path, capsys):
    a, b = wav(tmp_path / "a.wav"), wav(tmp_path / "b.wav", 2.0)
    assert main(["transcribe", str(a), str(b), "--model", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [TEXT.strip(), TEXT.strip()]
    assert "2/2 files transcribed, 3.0 s of audio" in err and "real-time factor" in err
    assert [c["samples"] for c in fake.calls] == [16_000, 32_000]
    assert fake.calls[0]["model"] == "/models/tiny"
    assert fake.calls[0]["verbose"] is None  # no mlx_whisper printing into our stdout
    assert not list(tmp_path.glob("*.txt"))


@pytest.mark.parametrize("fmt", ["txt", "vtt", "srt", "tsv", "json"])
def test_each_output_format(fake, tmp_path, capsys, fmt):
    src = wav(tmp_path / "talk.wav")
    out_dir = tmp_path / "out"
    assert main(["transcribe", str(src), "-f", fmt, "-o", str(out_dir)]) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in out_dir.iterdir()) == [f"talk.{fmt}"]
    text = (out_dir / f"talk.{fmt}").read_text(encoding="utf-8")
    if fmt == "txt":
        assert text.splitlines() == ["Hello world.", "Second line here."]
    elif fmt == "srt":
        assert parse_srt(text) == [(0.0, 1.5, "Hello world."), (1.5, 3.25, "Second line here.")]
    elif fmt == "vtt":
        assert parse_vtt(text) == [(0.0, 1.5, "Hello world."), (1.5, 3.25, "Second line here.")]
    elif fmt == "tsv":
        assert text.splitlines() == ["start\tend\ttext", "0\t1500\tHello world.",
                                     "1500\t3250\tSecond line here."]
    else:
        data = json.loads(text)
        assert data["text"] == TEXT and len(data["segments"]) == 2 and data["language"] == "en"


def test_all_formats_with_word_timestamps(fake, tmp_path):
    src = wav(tmp_path / "talk.wav")
    rc = main(["transcribe", str(src), "-f", "all", "-o", str(tmp_path / "o"),
               "--word-timestamps", "True", "--max-line-width", "12", "--max-line-count", "1"])
    assert rc == 0
    assert sorted(p.suffix for p in (tmp_path / "o").iterdir()) == \
        [".json", ".srt", ".tsv", ".txt", ".vtt"]
    assert fake.calls[0]["word_timestamps"] is True
    srt = parse_srt((tmp_path / "o" / "talk.srt").read_text())
    vtt = parse_vtt((tmp_path / "o" / "talk.vtt").read_text())
    # Line width 12, one line per cue: words are regrouped into more, shorter cues.
    assert len(srt) > 2 and [c[2] for c in srt] == [c[2] for c in vtt]
    assert all(len(c[2]) <= 12 for c in srt)
    assert " ".join(c[2] for c in srt) == "Hello world. Second line here."


def test_bad_files_are_reported_and_skipped(fake, tmp_path, capsys):
    good1, good2 = wav(tmp_path / "good1.wav"), wav(tmp_path / "good2.wav", 2.0)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("this is not audio at all\n" * 20)
    files = [good1, tmp_path / "missing.wav", tmp_path / "empty.wav", tmp_path / "notes.wav", good2]
    rc = main(["transcribe", *map(str, files), "-f", "srt", "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.srt", "good2.srt"]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 3
    assert "missing.wav" in errors[0] and "no such file" in errors[0]
    assert "empty.wav" in errors[1] and "empty" in errors[1].split("empty.wav")[1]
    assert "notes.wav" in errors[2] and "not a readable audio file" in errors[2]
    assert "2/5 files transcribed" in err and "Traceback" not in err


def test_a_failing_transcription_does_not_stop_the_others(fake, tmp_path, capsys):
    fake.fail_len = 32_000
    files = [wav(tmp_path / "a.wav"), wav(tmp_path / "b.wav", 2.0), wav(tmp_path / "c.wav")]
    assert main(["transcribe", *map(str, files)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [TEXT.strip(), TEXT.strip()]
    assert "b.wav: transcription failed (RuntimeError: decoder exploded)" in err


def test_options_reach_mlx_whisper(fake, tmp_path):
    src = str(wav(tmp_path / "a.wav"))
    main(["transcribe", src, "--language", "English", "--task", "translate",
          "--initial-prompt", "Dashwood.", "--temperature", "0.2",
          "--temperature-increment-on-fallback", "0.4", "--condition-on-previous-text", "False"])
    main(["transcribe", src, "--language", "cs", "--temperature-increment-on-fallback", "None"])
    main(["transcribe", src, "--beam-size", "5", "--patience", "2", "--length-penalty", "0.6"])
    main(["transcribe", src, "--draft-model", "small"])
    first, second, third, fourth = fake.calls
    assert first["draft_model"] is None and fourth["draft_model"] == str(Path("/models/small"))
    assert first["beam_size"] is None and second["patience"] is None
    assert (third["beam_size"], third["patience"], third["length_penalty"]) == (5, 2.0, 0.6)
    assert first["language"] == "en" and first["task"] == "translate"
    assert first["initial_prompt"] == "Dashwood."
    assert first["temperature"] == (0.2, 0.6, 1.0)
    assert first["condition_on_previous_text"] is False
    assert second["language"] == "cs" and second["temperature"] == 0.0
    assert second["task"] == "transcribe" and second["word_timestamps"] is False


def test_stdin_and_same_stem_outputs(fake, tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = wav(tmp_path / "x" / "take.wav"), wav(tmp_path / "y" / "take.wav")
    buf = io.BytesIO(wav(tmp_path / "in.wav", 0.5).read_bytes())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(buf))
    assert main(["transcribe", str(a), str(b), "-", "-o", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == \
        ["stdin.txt", "take-2.txt", "take.txt"]
    assert fake.calls[-1]["samples"] == 8_000


@pytest.mark.parametrize("argv, message", [
    ([], "no input"),
    (["a.wav", "b.wav", "--output-name", "x"], "--output-name needs exactly one input"),
    (["a.wav", "--highlight-words"], "--highlight-words requires --word-timestamps"),
    (["a.wav", "--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
    (["a.wav", "--patience", "2"], "--patience needs --beam-size"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, capsys, argv, message):
    assert main(["transcribe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _unwritable_dirs(tmp_path) -> list[Path]:
    (tmp_path / "a-file").write_text("x")
    dirs = [tmp_path / "a-file" / "sub"]  # mkdir fails: a file is in the way
    if os.geteuid() != 0:  # root writes anywhere the permission bits forbid
        ro = tmp_path / "read-only"
        ro.mkdir(mode=0o500)
        dirs.append(ro)
    if Path("/sys").is_dir() and not os.access("/sys", os.W_OK):
        dirs.append(Path("/sys"))  # an existing folder nobody may write, root included
    return dirs


def test_unwritable_output_dir_fails_before_any_decoding(fake, tmp_path, capsys):
    """Issue #18: -o DIR that cannot be written used to transcribe everything first, then die
    with a traceback."""
    for out in _unwritable_dirs(tmp_path):
        assert main(["transcribe", str(wav(tmp_path / "a.wav")), "-f", "srt", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"cannot write to --output-dir {out}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert fake.calls == []


def test_output_dir_naming_a_file_is_one_line_error(fake, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("keep me")
    assert main(["transcribe", str(wav(tmp_path / "a.wav")), "-o", str(tmp_path / "out.txt")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err and fake.calls == []
    assert (tmp_path / "out.txt").read_text() == "keep me"


def _tiny_mlx_folder(tmp_path) -> Path:
    from mlx_helpers import random_model, tiny_dims
    from mlx_bald.load import save_model_folder
    from mlx_bald.spec import CompressionSpec

    dims = tiny_dims(n_audio_layer=1, n_text_layer=1)
    return save_model_folder(random_model(dims), dims, CompressionSpec(), tmp_path / "model")


@pytest.mark.parametrize("damage", ["truncated-weights", "broken-config"])
def test_a_broken_model_fails_once_not_per_file(tmp_path, capsys, damage):
    """Issue #18: truncated weights were retried for every input (exit 1), a broken config
    failed once (exit 2); both now fail once, before any file, with exit 2."""
    folder = _tiny_mlx_folder(tmp_path)
    if damage == "truncated-weights":
        weights = folder / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        (folder / "config.json").write_text("{ not json")
    files = [str(wav(tmp_path / f"{n}.wav")) for n in "abc"]
    assert main(["transcribe", *files, "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("mlx-bald: error:") == 1 and "Traceback" not in err


def test_subtitle_checker_rejects_broken_files():
    with pytest.raises(SubtitleError):
        parse_srt("1\n00:00:01,000 --> 00:00:00,500\nbackwards\n")
    with pytest.raises(SubtitleError):
        parse_srt("1\n00:00:00.000 --> 00:00:01,000\nwrong decimal mark\n")
    with pytest.raises(SubtitleError):
        parse_vtt("00:00.000 --> 00:01.000\nno header\n")
    with pytest.raises(SubtitleError):
        parse_vtt("WEBVTT\n\n00:00.000 --> 00:01.000\n\n")


# ---- real model, real speech ------------------------------------------------------------------
def _norm(text: str) -> str:
    from mlx_bald.evaluate import normalizer_for

    return normalizer_for("en")[1](text)


@pytest.mark.slow
def test_example_prints_just_the_transcript():
    from mlx_bald.data.librivox import example_clip

    proc = run_cli("transcribe", "--example", "--model", "whisper-tiny.en")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert _norm(lines[0]) == _norm(example_clip().text)
    assert "1/1 files transcribed" in proc.stderr


@pytest.mark.slow
def test_example_with_a_draft_model_prints_the_same_transcript(tmp_path):
    """Speculative decoding from the command line: tiny.en drafted by tiny.en + a shortlist head."""
    draft = tmp_path / "tiny-shortlist"
    assert run_cli("convert", "whisper-tiny.en", "--out", str(draft), "--head", "shortlist:32:256").returncode == 0
    plain = run_cli("transcribe", "--example", "--model", "whisper-tiny.en")
    drafted = run_cli("transcribe", "--example", "--model", "whisper-tiny.en", "--draft-model", str(draft))
    assert drafted.returncode == 0, drafted.stderr
    assert drafted.stdout == plain.stdout
    assert "draft acceptance" in drafted.stderr and "target passes" in drafted.stderr


@pytest.mark.slow
def test_real_clip_all_formats_next_to_a_bad_file(tmp_path):
    from mlx_bald.data.librivox import load_librivox

    clip = next(c for c in load_librivox() if c.id.endswith("-0930"))  # 3.3 s; tiny.en exact
    bad = tmp_path / "readme.txt"
    bad.write_text("not audio")
    proc = run_cli("transcribe", str(bad), str(clip.path), "--model", "whisper-tiny.en",
                   "-f", "all", "-o", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "readme.txt" in proc.stderr and "not a readable audio file" in proc.stderr
    assert "1/2 files transcribed" in proc.stderr and "Traceback" not in proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == \
        sorted(f"{clip.path.stem}.{e}" for e in ("txt", "vtt", "srt", "tsv", "json"))
    assert _norm((out / f"{clip.path.stem}.txt").read_text()) == _norm(clip.text)
    srt = parse_srt((out / f"{clip.path.stem}.srt").read_text())
    vtt = parse_vtt((out / f"{clip.path.stem}.vtt").read_text())
    assert [c[2] for c in srt] == [c[2] for c in vtt]
    assert 0.0 <= srt[0][0] < srt[-1][1] <= clip.seconds + 0.5
    assert json.loads((out / f"{clip.path.stem}.json").read_text())["language"] == "en"
