"""folder-<lang>:PATH: a user's own unlabelled audio as a training set."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mlx_bald.compress.train.data import set_subset
from mlx_bald.data import load_set
from mlx_bald.errors import MlxBaldError
from mlx_bald.evaluate import evaluate


def test_folder_set_is_every_audio_file_unlabelled(tmp_path):
    for rel in ("a/1.wav", "a/2.flac", "b/3.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, np.zeros(1600, dtype=np.float32), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    clips = load_set(f"folder-en:{tmp_path}")
    assert [c.id for c in clips] == ["a/1", "a/2", "b/3"]
    assert {c.language for c in clips} == {"en"} and all(c.text == "" for c in clips)
    assert clips[0].seconds == pytest.approx(0.1)
    ids = [c.id for c in set_subset(f"folder-en:{tmp_path}", 2)]
    assert len(ids) == 2 and all(i.startswith(f"folder-en:{tmp_path}/") for i in ids)


def test_folder_set_errors_are_clear(tmp_path):
    with pytest.raises(MlxBaldError, match="not a folder"):
        load_set(f"folder-en:{tmp_path / 'missing'}")
    with pytest.raises(MlxBaldError, match="no audio files"):
        load_set(f"folder-en:{tmp_path}")
    with pytest.raises(MlxBaldError, match="names its language"):
        load_set(f"folder-:{tmp_path}")
    with pytest.raises(MlxBaldError, match="no references"):
        evaluate("whisper-base", f"folder-en:{tmp_path}")
