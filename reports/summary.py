"""The comparison as a terminal reads it: one compact table within 100 columns (the full
tables stay in report/), with each method's headline, its paired difference to the
reference method, the KL, the out-of-domain score and the reward-hacking alarm."""

from __future__ import annotations

import textwrap

from flowarena.core.rundir import RunDir
from flowarena.reports.tables import Comparison, comparison, format_cell, markdown_table

WIDTH = 100


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def terminal_summary(c: Comparison, width: int = WIDTH) -> str:
    """Rows of `c.records` under short headers; a column that would push the table past
    `width` is dropped (the files keep every column)."""
    if not c.records or all(r["method"].startswith("base") for r in c.records):
        return "no finished method x seed cells yet"
    head = next((m for m in c.metrics if m.paired and m.role == "primary"), None)
    ood = next((m for m in c.metrics if m.role == "secondary"), None)
    models = len({r["model"] for r in c.records}) > 1
    columns = ([("model", lambda r: r["model"])] if models else []) + [
        ("method", lambda r: _clip("base" if r["method"].startswith("base") else r["method"], 18)),
        ("seeds", lambda r: str(r["seeds"]))]
    if head is not None:
        columns.append((head.title.replace("Soft-TIFA ", ""),
                        lambda r: format_cell(r, head.key, head.digits)))
        if c.reference:
            columns.append((f"Δ vs {c.reference} [95 % CI]",
                            lambda r: r.get("vs_reference", "").removesuffix(f" vs {c.reference}")))
    columns.append(("KL", lambda r: "" if r.get("kl") is None else f"{r['kl']:.1e}"))
    if ood is not None:
        columns.append(("ood", lambda r: format_cell(r, ood.key, ood.digits)))
    columns.append(("hacking?", lambda r: "" if r["method"].startswith("base") else r.get("alarm", "")))
    rows = [[fn(r) for _, fn in columns] for r in c.records]
    header = [name for name, _ in columns]
    for name in ("ood", "KL", "model"):  # what goes first when the table is too wide
        if len(markdown_table(header, rows).splitlines()[0]) <= width:
            break
        if name in header:
            i = header.index(name)
            header.pop(i)
            rows = [r[:i] + r[i + 1:] for r in rows]
    legend = f"\nood: {ood.title}" if ood is not None and "ood" in header else ""
    verdict = textwrap.fill(base_verdict(c, head), width)
    return markdown_table(header, rows) + legend + (f"\n{verdict}" if verdict else "")


def base_verdict(c: Comparison, head) -> str:
    """Whether fine-tuning moved the headline away from the pretrained model, in words: each
    method's Δ against the base model (paired on the same prompts and noise). Training is random
    too, so only seeds can resolve it: over several, a Student-t 95 % interval that excludes 0;
    with one, no verdict at all, since an interval over prompts says nothing of the next seed (a
    quick run's one low draw must not read as "fine-tuning hurt": 48 prompts gave one seed's grpo
    −4.5 ± 2.2 where all 192 gave +0.7 ± 0.8, docs/results.md)."""
    from scipy.stats import t as student

    key = None if head is None else f"delta_{head.key}"
    rows = [r for r in c.records if not r["method"].startswith("base") and key in r
            and r.get(f"{key}_stderr") is not None]
    if not rows:
        return ""
    parts, resolved = [], 0
    form = ".2e" if head.digits is None else f".{head.digits}f"
    for r in rows:
        d, se, n = r[key], r[f"{key}_stderr"], r["seeds"]
        hit = n > 1 and abs(d) > student.ppf(0.975, n - 1) * se
        resolved += hit
        parts.append(f"{r['method']} {d:+{form}} ± {se:{form}}" + (" (resolved)" if hit else ""))
    seeds = min(r["seeds"] for r in rows)
    prompts = f" × {head.n} prompts" if head.n else ""
    line = f"vs the pretrained model (Δ{head.title.split()[-1]}): " + ", ".join(parts)
    if seeds == 1:
        return line + (f". One seed{prompts} is one draw of training, so this run cannot tell whether "
                       "fine-tuning helps (the ± covers the prompts only); --seeds 3 measures the "
                       "training's spread")
    if resolved == 0:
        line += f". Not resolved at 95 % ({seeds} seeds{prompts}): more seeds or epochs can tell"
    return line


def run_summary(out, reference: str | None = None) -> str:
    """What `bench run` prints at its end: the table, the verdict, the warnings, where the report is."""
    c = comparison(out, reference)
    lines = [terminal_summary(c), *(f"warning: {a.line()}" for a in c.alarms)]
    if c.mixed_precision:
        lines.append(f"warning: {c.mixed_precision}")
    report = RunDir(out).report
    paired = f"; paired: {report / 'paired.md'}" if c.paired else ""
    where = f"full tables: {report / 'tables.md'}{paired}; report: {report / 'index.html'}"
    return "\n".join(lines) + "\n\n" + where
