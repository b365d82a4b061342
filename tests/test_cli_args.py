"""Issue #27: every numeric option of every subcommand is checked at parse time (one line,
exit 2, nothing loaded), and --vad-threshold is refused out of range or without --vad."""
from __future__ import annotations

import argparse

import pytest

from mlx_bald.cli.main import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_no_numeric_option_takes_a_bare_int_or_float():
    """A bare type=int/float lets -5, 0, nan or inf through to the run; arg_types bounds them."""
    loose = [f"{name} {'/'.join(a.option_strings)}" for name, p in _subparsers().items() for a in p._actions
             if a.type in (int, float) and not a.choices]
    assert loose == []


@pytest.mark.parametrize("argv", [
    ["compress", "--out", "o", "--merge-steps", "-5"],  # the three
    ["compress", "--out", "o", "--rank", "0"],
    ["compress", "--out", "o", "--batch-size", "0"],
    ["compress", "--out", "o", "--lr", "nan"],
    ["compress", "--out", "o", "--teacher-lr", "inf"],
    ["compress", "--out", "o", "--alpha", "1.5"],
    ["compress", "--out", "o", "--search-grid", "0.2,2"],
    ["compress", "--out", "o", "--compression", "1"],
    ["compress", "--out", "o", "--groups", "0-1,-2-3"],
    ["compress", "--out", "o", "--grad-accum", "0"],
    ["compress", "--out", "o", "--layer-epochs", "0"],
    ["compress", "--out", "o", "--recover-epochs", "-1"],
    ["compress", "--out", "o", "--seed", "-1"],
    ["transcribe", "a.wav", "--vad", "--vad-threshold", "2"],
    ["transcribe", "a.wav", "--vad", "--vad-threshold", "nan"],
    ["transcribe", "a.wav", "--vad", "--vad-threshold", "0"],
    ["transcribe", "a.wav", "--temperature", "-0.1"],
    ["transcribe", "a.wav", "--no-speech-threshold", "1.5"],
    ["transcribe", "a.wav", "--batch-size", "0"],
    ["transcribe", "a.wav", "--max-line-width", "0"],
    ["transcribe", "a.wav", "--clip-timestamps", "5,-1"],
    ["transcribe", "a.wav", "--beam-size", "3", "--patience", "0"],
    ["transcribe", "a.wav", "--beam-size", "3", "--length-penalty", "1.5"],
    ["eval", "--limit", "0"],
    ["convert", "x", "--out", "o", "--group-size", "100"],
    ["serve", "--port", "70000"],
    ["serve", "--max-upload-mb", "0"],
    ["serve", "--max-queue", "0"],
    ["serve", "--timeout", "nan"],
    ["bench", "--batches", "1,0"],
    ["bench", "--tokens", "0"],
    ["bench", "--set-limit", "-3"],
])
def test_bad_numbers_are_refused_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and len(err.strip().splitlines()) == 1  # not under 40 lines of usage


def test_edge_values_that_mean_something_still_parse():
    args = build_parser().parse_args(["compress", "--out", "o", "--teacher-steps", "0", "--merge-steps", "0",
                                      "--recover-epochs", "0", "--hidden-weight", "0", "--search-grid", "0,0.5,1"])
    assert (args.teacher_steps, args.merge_steps, args.recover_epochs, args.search_grid) == (0, 0, 0, [0, 0.5, 1])
    args = build_parser().parse_args(["transcribe", "a.wav", "--vad", "--vad-threshold", "0.3",
                                      "--temperature-increment-on-fallback", "None", "--logprob-threshold", "-2"])
    assert (args.vad_threshold, args.temperature_increment_on_fallback, args.logprob_threshold) == (0.3, None, -2.0)
    assert build_parser().parse_args(["bench", "--batches", "1,10"]).batches == [1, 10]


def test_vad_threshold_without_vad_is_refused(capsys):
    assert main(["transcribe", "a.wav", "--vad-threshold", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "mlx-bald: error: --vad-threshold needs --vad"
