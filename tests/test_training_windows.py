"""Training data of the general student: prose from the registries, three synthesis families,
seeded 30 s windows (synthetic and packed), and the data ladder's fit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_bald.data import prose, windows
from mlx_bald.data.clips import Clip
from mlx_bald.errors import MlxBaldError

POOL = {r: [[f"{r}/{k}", f"This is {r} sentence number {k} of the little test pool."] for k in range(30)]
        for r in prose.REGISTERS}


def test_sentences_split_after_stops_but_not_after_abbreviations():
    text = 'Mr. Smith met Dr. Jones. "Ahoy!" cried he. In 1846 the debt was $9,000. It fell.'
    assert list(prose.sentences(text)) == ["Mr. Smith met Dr. Jones.", '"Ahoy!" cried he.',
                                           "In 1846 the debt was $9,000.", "It fell."]


def test_speakable_drops_quotes_and_refuses_what_engines_would_misread():
    assert prose.speakable('“Stand by,” said the mate—quietly.') == "Stand by, said the mate, quietly."
    assert prose.speakable("Too short.") is None
    assert prose.speakable("The path is C:\\ndir\\x and more words here.") is None  # a symbol the voices spell
    assert prose.speakable(" ".join(["word"] * (prose.MAX_WORDS + 1))) is None


def test_eval_filter_drops_any_shared_five_word_run_and_equal_short_references():
    keep = prose.eval_filter(["Had he married a more amiable woman he might have been respectable",
                              "Goodbye."])
    assert not keep("Then, had he married a more amiable woman, all would be well.")
    assert not keep("goodbye")
    assert keep("He married a woman; she was amiable.")  # no five-word run in common
    assert keep("I said goodbye to the crew.")  # a short reference only counts when it is the whole sentence


@pytest.mark.slow
def test_prose_pool_has_200k_words_in_every_register_and_no_evaluation_text():
    pool = prose.load_sentences()
    counts = prose.word_counts(pool)
    assert sum(counts.values()) >= 200_000 and all(counts[r] > 20_000 for r in prose.REGISTERS)
    keep = prose.eval_filter(prose.eval_references())
    sample = [s for rows in pool.values() for _, s in rows[::50]]
    assert all(keep(s) for s in sample)
    assert all(any(ch.isdigit() for ch in s) for _, s in pool["numbers"][:200])


@pytest.mark.slow
@pytest.mark.parametrize("family, name", [("espeak", "en-us"), ("flite", "slt"), ("festival", "kal_diphone"),
                                          ("festival", "cmu_us_slt_arctic_hts")])
def test_every_synthesis_family_speaks_deterministically_at_16k(family, name):
    from mlx_bald.data.voices import Voice, speak

    texts = ["The ship sailed on the third of May.", "It carried 42 barrels of oil."]
    first, again = speak(texts, Voice(family, name, 1.05)), speak(texts, Voice(family, name, 1.05))
    for a, b, t in zip(first, again, texts):
        assert a.dtype == np.float32 and np.array_equal(a, b)
        assert 0.15 * len(t.split()) < len(a) / 16_000 < 1.5 * len(t.split())  # plausible speech length
    from mlx_bald.data.voices import FIXED_RATE

    if name not in FIXED_RATE:
        slower = speak(texts[:1], Voice(family, name, 1.2))[0]
        assert len(slower) > len(first[0])  # the stretch is honoured


def test_plan_is_a_pure_function_of_seed_and_index():
    a, b = windows.plan_synth(7, POOL), windows.plan_synth(7, POOL)
    assert a == b and windows.plan_synth(8, POOL) != a and windows.plan_synth(7, POOL, seed=1) != a
    plans = [windows.plan_synth(i, POOL) for i in range(60)]
    assert {p["voice_parts"][0] for p in plans} == {"espeak", "flite", "festival"}
    assert {p["group"] for p in plans} == set(prose.REGISTERS)


@pytest.mark.slow
def test_synthetic_windows_are_nested_and_rebuilt_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(windows, "data_dir", lambda: tmp_path)
    monkeypatch.setattr(prose, "load_sentences", lambda: POOL)
    three = windows.load_synth(3, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "synth-en/seed-0/manifest.jsonl").read_text().splitlines()]
    assert [c.id for c in windows.load_synth(2, progress=False)] == [c.id for c in three][:2]
    for c in three:
        assert 1 < c.seconds <= windows.WINDOW_S and c.text and c.language == "en"
        c.path.unlink()
    windows.load_synth(3, progress=False)  # a lost wav is rendered again from its plan
    assert [c.path.is_file() for c in three] == [True] * 3
    for c in three:
        c.path.unlink()
    (tmp_path / "synth-en/seed-0/manifest.jsonl").unlink()
    windows.load_synth(3, progress=False)  # from the seed alone
    again = [json.loads(line) for line in (tmp_path / "synth-en/seed-0/manifest.jsonl").read_text().splitlines()]
    assert [r["sha1"] for r in again] == [r["sha1"] for r in rows] and all(r["sha1"] for r in rows)


def _clip(tmp_path, name: str, seconds: float, lang: str = "en") -> Clip:
    import soundfile as sf

    path = tmp_path / f"{name}.wav"
    sf.write(str(path), np.full(int(seconds * 16_000), 0.1, np.float32), 16_000)
    return Clip(id=name, path=path, text=f"say {name}", language=lang)


def _clip_manifest(tmp_path, prefix: str, n: int, seconds: float, text: str):
    """``set.jsonl`` listing ``n`` English clips of ``seconds`` each (written once)."""
    for k in range(n):
        if not (tmp_path / f"{prefix}{k}.wav").is_file():
            _clip(tmp_path, f"{prefix}{k}", seconds)
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps({"audio": f"{prefix}{k}.wav", "text": f"{text} {k}", "language": "en"}) + "\n"
                                for k in range(n)))
    return manifest


def test_packing_fills_windows_with_every_clip_once_one_language_each(tmp_path):
    clips = [_clip(tmp_path, f"c{k}", 1 + k % 7, "en" if k % 3 else "cs") for k in range(40)]
    clips.append(_clip(tmp_path, "too-long", 31))
    plans = windows.plan_packs(clips, "test-set")
    assert plans == windows.plan_packs(clips, "test-set")
    used = [c for p in plans for c in p["clips"]]
    assert sorted(used) == sorted(c.id for c in clips if c.id != "too-long")
    by_id = {c.id: c for c in clips}
    for p in plans:
        assert len({by_id[c].language for c in p["clips"]}) == 1
        seconds = p["lead"] + sum(by_id[c].seconds for c in p["clips"]) + sum(p["gaps"])
        assert seconds <= windows.PACK_FILL_S[1] + 0.2 or len(p["clips"]) == 1
        assert p["text"] == " ".join(by_id[c].text for c in p["clips"])


def test_packed_set_through_load_set_writes_its_windows_and_follows_a_changed_set(tmp_path, monkeypatch):
    from mlx_bald.data import load_set

    monkeypatch.setattr(windows, "data_dir", lambda: tmp_path / "cache")
    manifest = _clip_manifest(tmp_path, "p", 6, 4, "prompt")
    packed = load_set(f"pack:{manifest}")
    assert sum(len(c.audio) for c in packed) > 6 * 4 * 16_000 and len(packed) < 6
    _clip_manifest(tmp_path, "p", 3, 4, "prompt")
    assert " ".join(c.text for c in load_set(f"pack:{manifest}")).count("prompt") == 3


def test_synth_spec_needs_a_count_and_caches_share_one_key():
    from mlx_bald.compress.train.data import counted
    from mlx_bald.data import cache_key, load_set

    with pytest.raises(MlxBaldError, match="synth-en:N"):
        load_set("synth-en")
    assert cache_key("synth-en:250") == cache_key("synth-en:4000") == "synth-en"
    assert cache_key("fillets-nl:train") == "fillets-nl:train"
    assert counted("synth-en:1000@all", 400) == ("synth-en:1000", None)
    assert counted("fillets-nl:train@25", 400) == ("fillets-nl:train", 25)
    assert counted("fillets-nl:train", 400) == ("fillets-nl:train", 400)
    assert counted("/data/me@home/set.jsonl", 7) == ("/data/me@home/set.jsonl", 7)


def test_a_cut_training_target_does_not_teach_the_model_to_stop():
    from mlx_bald.compress.train.data import token_sequence, tokenizer

    eot = tokenizer().eot
    short, _ = token_sequence("a short line", "en", max_tokens=64)
    cut, _ = token_sequence(" ".join(["word"] * 100), "en", max_tokens=64)
    assert short[-1] == eot and len(cut) == 64 and eot not in cut


def test_ladder_fit_recovers_a_power_law_and_writes_table_and_plot(tmp_path, monkeypatch):
    from benchmarks.studies import general_ladder as ladder

    f = ladder.fit([(250, 80.0 * 250 ** -0.3), (1000, 80.0 * 1000 ** -0.3), (4000, 80.0 * 4000 ** -0.3)])
    assert f == {"a": 80.0, "b": 0.3}
    assert ladder.needed(f, 80.0 * 16000 ** -0.3) == pytest.approx(16000, rel=1e-3)
    assert ladder.needed({"a": 5.0, "b": -0.1}, 1.0) is None  # a curve that does not fall never gets there
    for n, wer in ((250, 60.0), (1000, 40.0)):
        run = tmp_path / f"r{n}-emb256"
        run.mkdir()
        table = [{"model": "whisper-base", "params": 72_593_920, "wer_librivox": 1.41, "wer_asterisk": 9.52,
                  "wer_test": 77.3},
                 {"model": "lowrank-embedding", "params": 59_450_000, "wer_librivox": wer, "wer_asterisk": wer,
                  "wer_test": 80.0}]
        (run / "report.json").write_text(json.dumps({
            "table": table, "peak_rss_gib": 4.0, "wall_seconds_this_session": 600,
            "student": {"train_seconds": 300, "spec": {"notes": {"train_audio": {"a": n}}}}}))
    monkeypatch.setattr(ladder, "RESULTS", tmp_path / "results")
    result = ladder.report(ladder.collect(tmp_path, [250, 1000]))
    ladder.write(result, "ladder")
    assert (tmp_path / "results/ladder.png").stat().st_size > 10_000
    fitted = result["fits"]["rank-256 embedding / LibriVox"]
    assert fitted["limit"] == 4.41 and fitted["windows_needed"] > 1000
    assert "| 1000 | 1000 | rank-256 embedding |" in (tmp_path / "results/ladder.md").read_text()


def test_fetch_builds_a_packed_set_now(tmp_path, monkeypatch, capsys):
    from mlx_bald.cli.main import main

    monkeypatch.setattr(windows, "data_dir", lambda: tmp_path / "cache")
    manifest = _clip_manifest(tmp_path, "f", 4, 3, "line")
    assert main(["fetch", f"pack:{manifest}"]) == 0
    out = capsys.readouterr().out
    assert f"pack:{manifest}:" in out and str(tmp_path / "cache" / "packed") in out
