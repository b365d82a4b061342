"""A user's labelled data through load_set: manifests (JSONL, CSV), audiofolders, save_to_disk
folders, and the errors bad input gets (file, row, problem) before any model work."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli
from mlx_bald.data import Columns, load_set
from mlx_bald.data.hf import clips_from_dataset
from mlx_bald.errors import MlxBaldError


def _wav(path, seconds=0.1, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, header, *rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def audio(tmp_path):
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "sub" / "b.wav", sr=8000)
    return tmp_path


def test_jsonl_manifest_relative_and_absolute_paths(audio):
    manifest = _jsonl(audio / "m.jsonl", [
        {"audio": "a.wav", "text": " Hello   there. ", "language": "English"},
        {"audio": str(audio / "sub" / "b.wav"), "text": "Ahoj.", "language": "cs"}])
    clips = load_set(str(manifest))
    assert [(c.id, c.text, c.language) for c in clips] == [("a.wav", "Hello there.", "en"), ("sub/b.wav", "Ahoj.", "cs")]
    assert [c.group for c in clips] == ["", "sub"]
    assert clips[1].seconds == pytest.approx(0.1, abs=1e-3)  # 8 kHz resampled to 16 kHz


def test_csv_manifest_language_from_option_and_column_overrides(audio):
    manifest = _csv(audio / "m.csv", "file,words,speaker", "a.wav,one two,s1", "sub/b.wav,three,s2")
    clips = load_set(str(manifest), audio_column="file", text_column="words", language="cs")
    assert [(c.id, c.text, c.language, c.group) for c in clips] == [("a.wav", "one two", "cs", "s1"),
                                                                   ("sub/b.wav", "three", "cs", "s2")]
    # a language column wins; the option fills its empty cells
    manifest = _csv(audio / "n.csv", "audio,sentence,locale", "a.wav,one,en-US", "sub/b.wav,two,")
    assert [c.language for c in load_set(str(manifest), language="fr")] == ["en", "fr"]


def test_audiofolder_with_and_without_splits(audio):
    _csv(audio / "metadata.csv", "file_name,transcription", "a.wav,first", "sub/b.wav,second")
    clips = load_set(str(audio), language="en")
    assert [(c.id, c.text) for c in clips] == [("a.wav", "first"), ("sub/b.wav", "second")]
    root = audio / "split"
    _wav(root / "test" / "x.wav")
    _jsonl(root / "test" / "metadata.jsonl", [{"file_name": "x.wav", "text": "ex", "language": "de"}])
    _wav(root / "train" / "y.wav")
    _jsonl(root / "train" / "metadata.jsonl", [{"file_name": "y.wav", "text": "why", "language": "de"}])
    assert [c.id for c in load_set(f"{root}:test")] == ["x.wav"]
    with pytest.raises(MlxBaldError, match="has splits test, train"):
        load_set(str(root))
    with pytest.raises(MlxBaldError, match="no split 'dev'"):
        load_set(f"{root}:dev")


def test_save_to_disk_folder_with_bytes_and_paths(audio):
    datasets = pytest.importorskip("datasets")
    data = (audio / "a.wav").read_bytes()
    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": data, "path": "a.wav"}, {"bytes": None, "path": str(audio / "sub" / "b.wav")}],
        "sentence": ["from bytes", "from a path"], "locale": ["en", "en"]})
    ds = ds.cast_column("audio", datasets.Audio())  # as a real dataset has it (a cast, no torchcodec)
    ds.save_to_disk(str(audio / "one"))
    clips = load_set(str(audio / "one"))
    assert [c.text for c in clips] == ["from bytes", "from a path"] and clips[0].data is not None
    assert clips[0].seconds == pytest.approx(0.1, abs=1e-3) and clips[1].seconds == pytest.approx(0.1, abs=1e-3)
    datasets.DatasetDict({"test": ds, "train": ds}).save_to_disk(str(audio / "dict"))
    assert len(load_set(f"{audio / 'dict'}:test")) == 2
    with pytest.raises(MlxBaldError, match="several splits"):
        load_set(str(audio / "dict"))
    ds.select([]).save_to_disk(str(audio / "empty"))
    with pytest.raises(MlxBaldError, match="no rows|could not read"):  # datasets 5 cannot read 0 rows back
        load_set(str(audio / "empty"))
    with pytest.raises(MlxBaldError, match="no rows"):
        clips_from_dataset(ds.select([]), "empty", Columns(), None)


@pytest.mark.parametrize("rows, message", [
    (["audio,language", "a.wav,en"], r"m\.csv: no transcript column .*--text-column"),
    (["audio,text", "a.wav,hi"], r"m\.csv: no language column .*--language"),
    (["audio,text,language", "a.wav,hi,en", "gone.wav,hi,en"], r"m\.csv, row 3: audio file .*gone\.wav.* not found"),
    (["audio,text,language", "a.wav,hi,en", "notes.wav,hi,en"], r"m\.csv, row 3: audio file .*notes\.wav.* not readable"),
    (["audio,text,language", "a.wav,  ,en"], r"m\.csv, row 2: empty transcript"),
    (["audio,text,language", "a.wav,hi,xx"], r"m\.csv, row 2: unknown language 'xx'"),
    (["audio,text,language", ",hi,en"], r"m\.csv, row 2: no audio file named"),
    (["audio,text,language", "a.wav,hi,en", "a.wav,again,en"], r"m\.csv, row 3: the same audio as row 2"),
    (["audio,text,language"], r"m\.csv: no rows"),
])
def test_bad_csv_rows_are_named(audio, rows, message):
    (audio / "notes.wav").write_text("not audio at all\n" * 10)
    with pytest.raises(MlxBaldError, match=message):
        load_set(str(_csv(audio / "m.csv", *rows)))


def test_bad_jsonl_rows_are_named(audio):
    bad = audio / "m.jsonl"
    bad.write_text('{"audio": "a.wav", "text": "hi", "language": "en"}\n\n{"audio": "a.wav", "text": \n')
    with pytest.raises(MlxBaldError, match=r"m\.jsonl, row 3: not valid JSON"):
        load_set(str(bad))
    _jsonl(bad, [{"audio": "a.wav", "text": "hi", "language": "en"}, {"audio": "sub/b.wav", "language": "en"}])
    with pytest.raises(MlxBaldError, match=r"m\.jsonl, row 2: missing 'text'"):
        load_set(str(bad))
    with pytest.raises(MlxBaldError, match=r"no column 'wav'"):
        load_set(str(bad), audio_column="wav")
    with pytest.raises(MlxBaldError, match=r"--language 'klingon': unknown language"):
        load_set(str(bad), language="klingon")
    with pytest.raises(MlxBaldError, match="a manifest has no splits"):
        load_set(f"{bad}:test")
    with pytest.raises(MlxBaldError, match="unknown set"):
        load_set(str(audio / "nothing.jsonl"))
    with pytest.raises(MlxBaldError, match="write hf:NAME"):
        load_set("hf:only-a-name")


def test_eval_on_a_bad_manifest_is_one_line(audio):
    bad = _jsonl(audio / "bad.jsonl", [{"audio": "a.wav", "text": "", "language": "en"}])
    proc = run_cli("eval", "--model", "whisper-base", "--set", str(bad), "--engine", "torch", "--json")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.jsonl, row 1: empty transcript" in lines[0]


def test_hub_spec_is_parsed_and_offline_is_clear(audio, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        if name == "offline/set":
            raise ConnectionError("Couldn't reach 'offline/set' on the Hub")
        return datasets.Dataset.from_dict({"audio": [str(audio / "a.wav")], "sentence": ["hi"], "locale": ["cs"]})

    import mlx_bald.data.hf as hf

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hf, "hub_unreachable", lambda: None)  # the hub answers; the dataset fails
    clips = load_set("hf:org/cv:cs:test[:10]")
    assert calls == [("org/cv", "cs", "test[:10]")] and [(c.text, c.language) for c in clips] == [("hi", "cs")]
    load_set("hf:org/other:train")
    assert calls[-1] == ("org/other", None, "train")
    with pytest.raises(MlxBaldError, match=r"hf:offline/set:test: could not load .*Offline\? .*save_to_disk"):
        load_set("hf:offline/set:test")
    monkeypatch.setattr(hf, "hub_unreachable", lambda: "huggingface.co:443: refused")  # no hub at all
    with pytest.raises(MlxBaldError, match=r"hf:offline/set:test: cannot reach the Hugging Face hub .*save_to_disk"):
        load_set("hf:offline/set:test")
