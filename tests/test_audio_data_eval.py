import numpy as np
import pytest
import soundfile as sf

from mlx_bald.audio import load_audio, resample
from mlx_bald.data.fillets import _PAIR, _unescape, split_of
from mlx_bald.errors import AudioError
from mlx_bald.evaluate import corpus_wer


def test_audio_errors_are_clear(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.txt").write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "notes.txt")
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")


def test_audio_resampled_to_16k_mono(tmp_path):
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "a.ogg", stereo, 22050)
    audio = load_audio(tmp_path / "a.ogg")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 3  # pitch kept
    assert resample(np.ones(100, np.float32), 16000) is not None


def test_fillets_dialog_parser_handles_multiline_and_escapes():
    lua = ('dialogId("m-a", "font_small", "Hello \\"there\\".")\ndialogStr("Ahoj \\"ty\\".")\n\n'
           'dialogId("v-b", "font_big", "Second.")\ndialogStr(\n"Druh\u00e1 v\u011bta.")\n')
    pairs = [(i, _unescape(e), _unescape(c)) for i, e, c in _PAIR.findall(lua)]
    assert pairs == [("m-a", 'Hello "there".', 'Ahoj "ty".'), ("v-b", "Second.", "Druhá věta.")]


def test_fillets_split_is_by_level_and_fixed():
    # Recorded once: changing the rule would leak test levels into training.
    levels = ["aztec", "briefcase", "broom", "cellar", "experiments", "gods", "library", "party2",
              "crabshow", "emulator", "fdto", "keys", "snowman", "stairs", "start", "airplane", "linux"]
    got = {lv: split_of(lv) for lv in levels}
    assert [lv for lv in levels if got[lv] == "test"] == levels[:8]
    assert [lv for lv in levels if got[lv] == "dev"] == levels[8:15]
    assert got["airplane"] == got["linux"] == "train"


def test_corpus_wer_and_normalisers():
    wer, name = corpus_wer(["the colour is red", "hello world"], ["The color is red.", "hello"], "en")
    assert name == "whisper-english"
    assert wer == pytest.approx(100 * 1 / 6)  # British spelling and punctuation are not errors
    wer, name = corpus_wer(["Dobrý den, pane!"], ["dobrý den pane"], "cs")
    assert (wer, name) == (0.0, "whisper-basic")
    wer, _ = corpus_wer(["a b c d"], ["x b c d e"], "cs")
    assert wer == pytest.approx(50.0)


@pytest.mark.slow
def test_real_sets_load():
    from mlx_bald.data import load_set

    lib = load_set("librivox")
    assert len(lib) == 5 and abs(sum(c.seconds for c in lib) - 24.7) < 0.1
    assert lib[0].text.startswith("and mister john dashwood")
    test = load_set("fillets-cs:test")
    train = load_set("fillets-cs:train")
    assert len(test) > 100 and len(train) > 1000
    assert not {c.group for c in test} & {c.group for c in train}
    assert all(c.language == "cs" and c.text and c.translation for c in test)


def test_fillets_skips_audio_files_without_samples(tmp_path):
    """fillets-ng-data-nl ships OGG files with 0 frames; loading one would stop a training run."""
    import numpy as np
    import soundfile as sf

    from mlx_bald.data.fillets import _has_samples

    good, empty = tmp_path / "good.ogg", tmp_path / "empty.ogg"
    sf.write(str(good), np.zeros(1600, dtype=np.float32), 16000, format="OGG")
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000, format="OGG")
    (tmp_path / "junk.ogg").write_bytes(b"not audio")
    assert _has_samples(good) and not _has_samples(empty) and not _has_samples(tmp_path / "junk.ogg")


def test_eval_limit_must_be_at_least_one(capsys):
    """Issue #18: `eval --limit 0` evaluated every clip."""
    from mlx_bald.cli.main import main
    from mlx_bald.errors import MlxBaldError
    from mlx_bald.evaluate import evaluate

    with pytest.raises(SystemExit) as e:
        main(["eval", "--limit", "0"])
    assert e.value.code == 2 and "expected a whole number >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(MlxBaldError, match="at least 1 clip"):
        evaluate("whisper-base", "librivox", limit=0)


@pytest.mark.skipif(__import__("shutil").which("apt-cache") is None, reason="needs apt's package lists")
@pytest.mark.parametrize("spec, has", [("fillets-xx:test", "cs, nl"), ("asterisk-de:test", "en, es, fr")])
def test_unknown_debian_language_is_named_with_those_that_exist(isolated_cache, capsys, spec, has):
    """Issue #18: `eval --set fillets-xx:test` ended in a raw apt-get error."""
    from mlx_bald.cli.main import main

    assert main(["eval", "--set", spec]) == 2
    err = capsys.readouterr().err
    lang = spec.split("-")[1].split(":")[0]
    assert f"unknown language '{lang}'" in err and has in err and "apt-get" not in err
    assert not any(isolated_cache.rglob("*.deb"))  # nothing fetched
