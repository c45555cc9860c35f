"""The comparison's files under report/: tables.md, tables.csv (raw numbers), tables.tex
(booktabs), paired.md (each method against the reference), and the rows of the ratio's
noise floor (noise_floor.md and the page)."""

from __future__ import annotations

from pathlib import Path

from flowarena.core.io import atomic_write
from flowarena.core.rundir import RunDir
from flowarena.reports.compute import budget_text, matched_compute, reach_text
from flowarena.reports.paired import PairedDiff
from flowarena.reports.run_reader import Run, load_run
from flowarena.reports.tables import Comparison, comparison, format_cell, markdown_comparison, markdown_table

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\to$", "Δ": r"$\Delta$", "@": "@"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))
    for sym, tex in _LATEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def latex_table(c: Comparison, caption: str = "") -> str:
    """The comparison as a booktabs `table` (best trained method per column in bold)."""
    records, cols, best = c.records, c.columns, c.best
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{ll" + "r" * (1 + len(cols)) + "}", r"\toprule",
             " & ".join(_tex(t) for t in ["model", "method", "seeds"] + [col.title for col in cols]) + r" \\",
             r"\midrule"]
    for r in records:
        cells = [_tex(r["model"]), _tex(r["method"]), str(r["seeds"])]
        for col in cols:
            text = _tex(format_cell(r, col.key, col.digits))
            cells.append(rf"\textbf{{{text}}}" if best.get((r["model"], col.key)) == r["method"] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


PAIRED_NOTE = ("Each method minus the reference on the same seeds, prompts and evaluation noise: the "
               "mean of D[seed, prompt], with a 95 % percentile interval of a two-way bootstrap (seeds and "
               "prompts resampled independently, 10,000 resamples, fixed generator); * where it excludes 0. "
               "With one seed the interval covers the choice of prompts only, not training randomness; a "
               "metric without per-prompt values (KL of older files) is resampled over seeds only. "
               "'resolves': the smallest true difference this design detects with 80 % power at 5 % "
               "(2.8 × the bootstrap's standard error); 'seeds for 1 point': about how many seeds a "
               "difference of 1 (in the metric's units) would need, the prompts kept.")


def paired_rows(c: Comparison, paired: list[PairedDiff] | None = None) -> tuple[list[str], list[list[str]]]:
    """The paired comparison as a table: header, rows (one per method × metric); `paired`:
    other differences than the comparison's own (at matched compute) in its format."""
    header = ["model", "method", "vs", "metric", "Δ [95 % CI]", "paired over", "resolves",
              "seeds for 1 point"]
    digits = {m.key: m.digits for m in c.metrics}
    rows = []
    for d in c.paired if paired is None else paired:
        dg = digits.get(d.key, None if d.key == "kl" else 1)
        over = f"{d.seeds} seed{'s' if d.seeds > 1 else ''}"
        over += f" × {d.prompts} prompts" if d.prompts else ""
        res = d.resolvable()
        need = d.seeds_for(1.0) if dg is not None else None
        rows.append([d.model, d.method, d.reference, d.title, d.text(dg), over,
                     "–" if res is None else (f"{res:.{dg}f}" if dg is not None else f"{res:.1e}"),
                     "–" if need is None else str(need)])
    return header, rows


def write_run_tables(run: Run | str | Path, reference: str | None = None) -> str:
    """report/tables.md, tables.csv (raw numbers), tables.tex (booktabs) and paired.md of a run
    (read here from its directory where given a path, curves too: the matched-compute section
    picks each cell's evaluation within the budget)."""
    import pandas as pd

    run = run if isinstance(run, Run) else load_run(run)
    c = comparison(run, reference)
    md = markdown_comparison(c)
    report = RunDir(run.path).report
    atomic_write(report / "tables.md", lambda tmp: Path(tmp).write_text(md + "\n"))
    header, rows = paired_rows(c)
    if rows:
        text = (f"Method against {c.reference}, paired\n\n" + markdown_table(header, rows) + "\n\n"
                + PAIRED_NOTE + "\n" + (f"\nWarning: {c.mixed_precision}\n" if c.mixed_precision else ""))
        for m in matched_compute(run, c.reference):
            text += ("\n" + budget_text(m) + "\n\n" + markdown_table(header, paired_rows(c, m.paired)[1])
                     + "\n" + reach_text(run, m.model, c.reference) + "\n")
        atomic_write(report / "paired.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if c.records and not all(r["method"].startswith("base") for r in c.records):
        atomic_write(report / "tables.csv", lambda tmp: pd.DataFrame(c.records).to_csv(tmp, index=False))
        tex = latex_table(c, caption=c.note)
        atomic_write(report / "tables.tex", lambda tmp: Path(tmp).write_text(tex + "\n"))
    return md


FLOOR_NOTE = ("The ratio's noise floor, in two parts. Same weights: the first mini-batch's trained steps "
              "recomputed before the first update with the weights that sampled them (mean and max over "
              "steps and samples). Rounding in a change: on the first off-policy mini-batch, |log ρ| and "
              "KL(old ‖ new) as the update computes them minus both recomputed in fp32 (mean; – where no "
              "mini-batch is off-policy). Rounding, not policy change: a trust region whose ε (on |log ρ|) "
              "or δ (on the KL) is within 10× of either acts on noise.")


def noise_floor_rows(cells) -> tuple[list[str], list[list[str]]]:
    """One row per cell that measured the floor (epoch 0 of metrics.jsonl): header, rows."""
    header = ["model", "method", "seed", "abs log ρ mean", "abs log ρ max", "KL mean", "KL max",
              "rounding abs log ρ", "rounding KL", "KL of the change (fp32)", "ε or δ"]
    rows = []
    for c in sorted(cells, key=lambda c: (c.model, c.method, c.seed)):
        first = next((m for m in c.metrics if m.get("epoch") == 0 and "floor_kl_mean" in m), None)
        if first is None:
            continue
        region = c.config.get("trust_region") or {}
        limit = ", ".join(f"{'ε' if k == 'ratio_clip' else 'δ'} {v:g}" for k, v in region.items()) or "–"
        rows.append([c.model, c.method, str(c.seed)] + [f"{first[k]:.2e}" if k in first else "–" for k in (
            "floor_logratio_abs_mean", "floor_logratio_abs_max", "floor_kl_mean", "floor_kl_max",
            "rounding_logratio_abs_mean", "rounding_kl_mean", "change_kl_mean_fp32")] + [limit])
    return header, rows
