"""The BaldWhisper recipe's final table and its promises: every stage scored on the test split
and LibriVox (and asterisk-en:test for the general student) as users decode (greedy with the
temperature fallback), greedy beside it, looping hypotheses counted, and each stage's
teacher-forced agreement with the teacher; then the targets, met or not, in words."""
from __future__ import annotations

import sys
from pathlib import Path

from mlx_bald.compress.ops.model import count_parameters
from mlx_bald.compress.train.data import ensure_encoder_cache
from mlx_bald.compress.train.greedy import decoded_wer

TABLE_VERSION = 2  # rows scored before the fallback/agreement columns are scored again


def _log(msg: str) -> None:
    print(f"[bald] {msg}", file=sys.stderr, flush=True)


def final_table(run, teacher, final: Path) -> None:
    """WER of every stage on the language's test split and on LibriVox (English), decoded
    greedily on cached encoder states (all stages share base's encoder), plus parameters."""
    from mlx_bald.compress.ops.model import load_compressed

    o = run.o
    sets = {"test": o.set_spec("test"), "librivox": "librivox"} | ({"asterisk": GENERAL_ENGLISH} if o.general else {})
    clips = {k: run.load(v) for k, v in sets.items()}
    caches = {k: ensure_encoder_cache(run.base, o.model, sets[k], clips[k]) for k in sets}
    # {row: (checkpoint folder, None for base; model)}: a rerun after a continued stage loads
    # and re-scores only the checkpoints that changed
    stages = {o.model: (None, lambda: run.base)}  # the source model's row comes first
    if not o.general and teacher is not run.base:
        stages["teacher"] = (run.work / "teacher", lambda: teacher)
    if (run.work / "merged" / "model.safetensors").is_file():
        stages["merged"] = (run.work / "merged", lambda: load_compressed(run.work / "merged")[0].to(run.device))
    final_name = "merged+lowrank-embedding" if "merged" in stages else "lowrank-embedding"
    stages[final_name] = (final, lambda: load_compressed(final)[0].to(run.device))
    scored = run.report.get("table_rows", {})
    rows = []
    for name, (folder, load) in stages.items():
        stamp = o.model if folder is None else (folder / "model.safetensors").stat().st_mtime_ns
        if scored.get(name, {}).get("stamp") == stamp and scored[name].get("sets") == sets \
                and scored[name].get("version") == TABLE_VERSION:
            row = scored[name]["row"]
        else:
            m = load()
            row = {"model": name, "params": count_parameters(m)}
            for k in sets:  # as users decode (fallback), greedy beside it, loops, agreement with the teacher
                scores = decoded_wer(m, clips[k], caches[k])
                row |= {f"wer_{k}": round(scores["wer"], 2), f"greedy_{k}": round(scores["greedy"], 2),
                        f"loops_{k}": scores["loops"],
                        f"agreement_{k}": run.agreement(m, teacher, clips[k], caches[k], k)}
            scored[name] = {"stamp": stamp, "sets": sets, "row": row, "version": TABLE_VERSION}
            run.save_report(table_rows=scored)
        rows.append(row)
        _log(f"table: {row}")
    base_wer, final_wer = rows[0]["wer_test"], rows[-1]["wer_test"]
    verdict = (f"WORSE than stock {o.model} on {sets['test']}: {final_wer} vs {base_wer} WER"
               if final_wer > base_wer else f"not worse than stock {o.model} on {sets['test']}: {final_wer} vs {base_wer} WER")
    _log(f"student: {verdict}" + (" -- do not ship it; --name registers it as NAME-unvetted" if final_wer > base_wer else ""))
    met = general_targets(rows, o.model) if o.general else targets(rows, o.model)
    for line in met.values():
        _log(f"target: {line['says']}")
    run.save_report(table=rows, table_sets={k: f"{v} ({len(clips[k])} clips)" for k, v in sets.items()},
                    table_decoding="wer_SET: greedy with mlx-whisper's temperature fallback (compression ratio "
                                   "2.4, log-prob -1), greedy_SET: greedy alone, loops_SET: greedy hypotheses "
                                   "without end-of-text or repeating themselves, agreement_SET: % of the teacher's "
                                   "greedy tokens reproduced teacher-forced; on cached base encoder states (torch), "
                                   "whisper-basic normaliser for non-English, whisper-english for LibriVox",
                    verdict=verdict, targets=met)


GENERAL_ENGLISH = "asterisk-en:test"  # real English beside LibriVox (one speaker, shared with train)
# the general student's promises against stock base: (table column, kind, bound)
GENERAL_TARGETS = {"librivox": ("wer_librivox", "plus", 3.0), "asterisk-en": ("wer_asterisk", "times", 1.3),
                   "test": ("wer_test", "times", 1.1)}


def general_targets(rows: list[dict], model: str) -> dict[str, dict]:
    """Each of GENERAL_TARGETS for the final student, met or not, in words: the vetting gate
    (cli/compress.py) registers the default model only when all are met."""
    base, final = rows[0], rows[-1]
    out = {}
    for name, (col, kind, bound) in GENERAL_TARGETS.items():
        limit = base[col] + bound if kind == "plus" else base[col] * bound
        met = final[col] <= limit
        out[name] = {"met": met, "wer": final[col], "base": base[col], "limit": round(limit, 2),
                     "says": f"{name} WER {final[col]} vs {model} {base[col]}: " + ("met" if met else "NOT met")
                             + f" (<= {'base + ' if kind == 'plus' else ''}{bound}{'x' if kind == 'times' else ''}"
                             + f" = {limit:.2f})"}
    return out


STUDENT_OVER_TEACHER = 1.10  # the specialised student's test WER may be at most this times its teacher's


def targets(rows: list[dict], model: str) -> dict[str, dict]:
    """The specialised recipe's two promises on the test split, each met or not, in words:
    the teacher is not worse than base, and the student is within STUDENT_OVER_TEACHER of it."""
    by = {r["model"]: r["wer_test"] for r in rows}
    base, final = by[model], rows[-1]["wer_test"]
    teacher = by.get("teacher", base)  # no teacher row: base taught (refused fine-tune, or --general)
    out = {"teacher_vs_base": {"met": teacher <= base, "ratio": round(teacher / max(base, 1e-9), 3)},
           "student_vs_teacher": {"met": final <= STUDENT_OVER_TEACHER * teacher,
                                  "ratio": round(final / max(teacher, 1e-9), 3)}}
    out["teacher_vs_base"]["says"] = (f"teacher test WER {teacher} vs base {base} ({out['teacher_vs_base']['ratio']}x): "
                                      + ("met" if out["teacher_vs_base"]["met"] else "NOT met") + " (<= 1.00x)")
    out["student_vs_teacher"]["says"] = (f"student test WER {final} vs teacher {teacher} "
                                         f"({out['student_vs_teacher']['ratio']}x): "
                                         + ("met" if out["student_vs_teacher"]["met"] else "NOT met")
                                         + f" (<= {STUDENT_OVER_TEACHER:.2f}x)")
    return out
