"""Issue #27: nothing of the user's is lost, and bad settings are refused before any work.

--out naming a folder of someone else's files, or a file (convert, compress); atomic_dir
replacing only folders mlx-bald wrote; a compress run refused for bad data leaving nothing on
disk; a hub dataset failing at once (no retries) when the hub cannot be reached."""
from __future__ import annotations

import json

import pytest

from mlx_bald.cli.main import main
from mlx_bald.errors import MlxBaldError
from mlx_bald.fsutil import MARKER, atomic_dir


def _users_folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "photos").mkdir()
    (d / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    return d


def _intact(d) -> bool:
    return (d / "thesis.tex").read_text() == "years of work" and (d / "photos" / "a.jpg").exists()


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    return err


def test_atomic_dir_never_replaces_a_folder_it_did_not_write(tmp_path):
    mine = _users_folder(tmp_path)
    with pytest.raises(MlxBaldError, match="did not write"):
        with atomic_dir(mine, overwrite=True) as tmp:
            (tmp / "config.json").write_text("{}")
    assert _intact(mine) and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp folder left


def test_atomic_dir_replaces_its_own_folders_and_older_model_folders(tmp_path):
    out = tmp_path / "model"
    for n in range(2):  # the second write replaces the first (marked) one
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "weights.safetensors").write_text(str(n))
    assert (out / MARKER).is_file() and (out / "weights.safetensors").read_text() == "1"
    old = tmp_path / "old-model"  # written before the marker existed: recognised by its files
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (old / "weights.safetensors").write_text("old")
    with atomic_dir(old, overwrite=True) as tmp:
        (tmp / "weights.safetensors").write_text("new")
    assert (old / "weights.safetensors").read_text() == "new" and not (old / "config.json").exists()
    (old / "notes.txt").write_text("mine")  # a model folder with the user's own file in it
    (old / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (old / MARKER).unlink()
    with pytest.raises(MlxBaldError):
        with atomic_dir(old, overwrite=True):
            pass
    assert (old / "notes.txt").read_text() == "mine"


@pytest.fixture
def no_work(monkeypatch):
    """convert, compress and bench fail the test if they get as far as converting, training or measuring."""
    import converters.shortlist_head as sh
    import converters.torch_to_mlx as tm

    def started(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(tm, "convert_checkpoint", started)
    monkeypatch.setattr(sh, "add_shortlist_head", started)
    monkeypatch.setattr("benchmarks.harness.run", started)
    try:
        import mlx_bald.compress.recipes.bald as bald
        monkeypatch.setattr(bald, "run_bald", started)
    except ImportError:  # no [compress] extra: compress stops before training anyway
        pass


def test_convert_refuses_an_out_folder_of_other_files_before_any_work(tmp_path, capsys, no_work):
    """Issue #27 item 1: exit 0, and the user's files were gone."""
    mine = _users_folder(tmp_path)
    assert main(["convert", "whisper-base", "--out", str(mine), "--head", "shortlist:64:256"]) == 2
    _one_line_error(capsys, f"--out {mine} holds files that mlx-bald did not write")
    assert main(["convert", "whisper-base", "--out", str(mine)]) == 2
    _one_line_error(capsys, "did not write")
    assert _intact(mine)


@pytest.mark.parametrize("command", [["convert", "whisper-base"], ["compress"], ["bench", "--quick"]])
def test_out_naming_a_file_is_one_line_before_any_work(tmp_path, capsys, command, no_work):
    """Issue #27 item 4: NotADirectoryError tracebacks (convert after 26 s of work)."""
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    assert main([*command, "--out", str(f)]) == 2
    _one_line_error(capsys, f"--out {f} is a file, not a folder")
    assert f.read_text() == "keep"


def test_compress_refuses_an_out_folder_of_other_files(tmp_path, capsys, no_work):
    mine = _users_folder(tmp_path)
    (mine / "student").mkdir()  # a run would replace student/ and mlx/
    assert main(["compress", "--out", str(mine)]) == 2
    _one_line_error(capsys, "did not write")
    assert _intact(mine) and (mine / "student").is_dir()


def test_compress_resumes_its_own_folders(tmp_path):
    from mlx_bald.cli.compress import check_run_folder

    run = tmp_path / "run"
    (run / "work").mkdir(parents=True)
    (run / "work" / MARKER).write_text("")
    (run / ".mlx.partial-abc").mkdir()  # left by a kill
    (run / "bald").mkdir()
    (run / "bald" / "report.json").write_text(json.dumps({"options": {}}))
    (run / "bald" / "anything").write_text("")
    check_run_folder(run)  # no error
    check_run_folder(tmp_path / "new")
    (run / "bald" / "report.json").unlink()
    with pytest.raises(MlxBaldError, match="anything"):
        check_run_folder(run)


def test_compress_refused_for_bad_data_leaves_nothing_on_disk(tmp_path, capsys, monkeypatch):
    """Issue #27 item 7: an empty OUT/work/ was left behind."""
    pytest.importorskip("torch")
    import mlx_bald.torch_ref as tr
    from test_compress_ops import tiny_model

    monkeypatch.setattr(tr, "load_torch_model", lambda *a, **k: tiny_model())
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"audio": "missing.wav", "text": "hello", "language": "en"}) + "\n")
    out = tmp_path / "run"
    assert main(["compress", "--train", str(manifest), "--dev", str(manifest), "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "mlx-bald: error:" in err and "missing.wav" in err and "Traceback" not in err
    assert not out.exists()


def test_hub_dataset_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    """Issue #27 item 6: 24 s and 10 lines of retries offline. No request leaves this machine:
    the connection probe is refused here, and datasets then runs in offline mode."""
    import socket

    import datasets
    from huggingface_hub import constants

    from mlx_bald.data.hf import load_hub

    def refused(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    seen = []

    def load_dataset(*a, **k):
        seen.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'someone/x' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(MlxBaldError, match="cannot reach the Hugging Face hub") as e:
        load_hub("someone/x:test", None)
    assert seen == [(True, True)]  # the cache is still read, in offline mode: no retries
    assert "\n" not in str(e.value)
    assert constants.HF_HUB_OFFLINE is False  # restored
