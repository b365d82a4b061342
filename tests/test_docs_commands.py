"""Docs that cannot rot: every command README.md and docs/*.md show is checked against the real
argument parsers, with no work done.

A command is any ``mlx-bald ...`` (also ``.venv/bin/mlx-bald``, ``python -m mlx_bald``,
``torchrun ... -m mlx_bald``) or ``python -m benchmarks.<module> ...`` found in a fenced code
block or an inline code span. For mlx-bald the parser is ``mlx_bald.cli.main.build_parser()``;
for a benchmark module it is the parser its ``__main__`` builds, caught at its ``parse_args``
before anything runs. Checked: the subcommand (and a benchmark's sub-command) exists, every
``-x``/``--flag`` is one of that parser's option strings, spelled in full (argparse would
accept a prefix; the docs may not), and a flag with fixed choices is given one of them (or a
``a|b`` list of them, or a placeholder in capitals). Placeholders in square brackets and
``...`` are read as the text around them.
"""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTS = re.compile(r"(?:(?:\.venv/bin/)?python3? -m (?:mlx_bald|benchmarks\.[\w.]+)|(?:\.venv/bin/)?mlx-bald)(?=\s|$)")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block line (backslash continuations joined) and every
    inline code span outside the fences (a span may wrap onto the next line of its paragraph)."""
    out, fenced, pending, para = [], False, None, []

    def spans():
        text = " ".join(line for _, line in para)
        out.extend((para[0][0], span) for span in re.findall(r"`([^`]+)`", text))
        para.clear()

    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            spans()
            fenced = not fenced
            continue
        if fenced:
            if pending is not None:
                line = pending[1] + " " + line.strip()
                n = pending[0]
            if line.rstrip().endswith("\\"):
                pending = (n, line.rstrip()[:-1])
                continue
            pending = None
            out.append((n, re.sub(r"(^|\s)#.*$", "", line)))  # a shell comment
        elif line.strip():
            para.append((n, line))
        else:
            spans()
    spans()
    return out


def commands(path: Path) -> list[tuple[str, str]]:
    """(where, command) of every command in the file; a command ends at ``&&``, ``;``, `` | ``."""
    found = []
    for n, code in _snippets(path.read_text()):
        code = code.replace("torchrun", " torchrun")
        code = re.sub(r"torchrun(?: --?[\w-]+(?: \d+)?)* -m mlx_bald", "mlx-bald", code)
        for m in STARTS.finditer(code):
            rest = re.split(r"&&|;| \| |\$\(|\)", code[m.start():])[0]
            found.append((f"{path.name}:{n}", " ".join(rest.split())))
    return found


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _module_parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``python -m module`` builds, caught when it parses (nothing runs). A module
    with no argparse parser is refused before it is run (it would do its work)."""
    import importlib.util

    source = Path(importlib.util.find_spec(module).origin).read_text()
    if "ArgumentParser(" not in source:
        raise AssertionError(f"python -m {module} has no argparse parser (no --help)")

    def catch(self, *args, **kwargs):
        raise _Caught(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        m.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        m.setattr(sys, "argv", [module])
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        except _Caught as caught:
            return caught.parser
    raise AssertionError(f"python -m {module} parsed no arguments (no argparse --help)")


def _tokens(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in prose
        words = command.split()
    out = []
    for w in words:
        w = w.strip("[]`").rstrip(",.:;)")
        if w and w not in ("...", "…") and not w.startswith("<"):
            out.append(w)
    return out


def _subparsers(parser: argparse.ArgumentParser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def problems(command: str, mlx_bald_parser: argparse.ArgumentParser, module_parser) -> list[str]:
    """What is wrong with one documented command ([] when it parses)."""
    words = _tokens(command)
    m = re.match(r"(?:\.venv/bin/)?python3? -m (benchmarks\.[\w.]+)", command)
    if m:
        parser, words = module_parser(m.group(1)), words[3:]
    else:
        parser, words = mlx_bald_parser, words[1:] if words[0].endswith("mlx-bald") else words[3:]
    out = []
    sub = _subparsers(parser)
    while sub is not None:
        first = next((w for w in words if not w.startswith("-")), None)
        if first is None or first.isupper():
            break
        if first not in sub.choices:
            return [f"no sub-command {first!r} (there are {', '.join(sub.choices)})"]
        parser = sub.choices[first]
        words = words[words.index(first) + 1:]
        sub = _subparsers(parser)
    options = parser._option_string_actions
    for i, w in enumerate(words):
        if not w.startswith("-") or w == "-" or re.fullmatch(r"-[\d.]+", w):
            continue
        flag, _, value = w.partition("=")
        action = options.get(flag)
        if action is None:
            out.append(f"{parser.prog}: no option {flag}")
            continue
        if action.choices is None or action.nargs == 0:
            continue
        value = value or (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else "")
        for v in filter(None, value.split("|")):
            if not v.isupper() and v not in {str(c) for c in action.choices}:
                out.append(f"{parser.prog} {flag}: {v!r} is none of {sorted(map(str, action.choices))}")
    return out


@pytest.fixture(scope="module")
def parsers():
    from mlx_bald.cli.main import build_parser

    cache: dict[str, argparse.ArgumentParser] = {}
    with pytest.MonkeyPatch.context() as mp:
        def module_parser(name: str):
            if name not in cache:
                cache[name] = _module_parser(name, mp)
            return cache[name]
        yield build_parser(), module_parser


def test_every_documented_command_parses(parsers):
    found = [c for path in doc_files() for c in commands(path)]
    assert len(found) > 40, "the extraction found too few commands"
    bad = [f"{where}: {cmd}\n    " + "\n    ".join(p) for where, cmd in found
           if (p := problems(cmd, *parsers))]
    assert not bad, "documented commands that do not parse:\n" + "\n".join(bad)


def test_a_doc_naming_a_missing_flag_fails(parsers, tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("Run `mlx-bald eval --set librivox --decode beam`.\n\n```bash\n"
                   "mlx-bald transcribe a.wav \\\n  --no-such-flag   # comment --ignored\n"
                   "mlx-bald eval --decode beems\nmlx-bald evaluate x\nmlx-bald eval --mod whisper-base\n"
                   "python -m benchmarks.serving batching --no-such-flag\n```\n")
    found = commands(doc)
    assert [c for _, c in found][:2] == ["mlx-bald eval --set librivox --decode beam",
                                         "mlx-bald transcribe a.wav --no-such-flag"]
    results = [problems(c, *parsers) for _, c in found]
    assert results[0] == []
    assert all(results[1:]), results  # each of the five bad commands is caught
