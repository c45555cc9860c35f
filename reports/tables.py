"""Plain-text / Markdown tables from result files (reports read results, never models).

Columns come from the metrics the result files describe (flowarena.core.results.Metric), so
a new benchmark's numbers appear without an edit here: the training reward, the primary
metrics, Δ of the paired one against the base model, the breakdown (detail), the
out-of-domain scores (secondary), the KL to the pretrained model and the training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowarena.core.results import CellResult, EvalRecord, Metric
from flowarena.reports.alarms import HackingAlarm, reward_hacking
from flowarena.reports.paired import PairedDiff, delta_vs, paired_differences
from flowarena.reports.run_reader import Run, load_run
from flowarena.tasks.soft_tifa import stderr


def _row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_row([str(c) for c in r], widths) for r in rows]
    return "\n".join(lines)


def _label(m: Metric) -> str:
    """A metric's row name in `bench eval`: a breakdown's group before its name (skill: count)."""
    group, _, name = m.key.rpartition(":")
    return f"{group}: {m.title}" if group and name == m.title else m.title


def _value(m: Metric) -> str:
    digits = 2 if m.digits is None else m.digits
    text = f"{m.value:.{digits}f}"
    return text if m.stderr is None else f"{text} ± {m.stderr:.{digits}f}"


def eval_table(result: dict, metrics: list[Metric]) -> str:
    """The table of one `bench eval` result, whichever benchmark it ran, from its metrics."""
    setting = f"{result['steps']} ODE steps, guidance {result['guidance']}, seed {result['seed']}"
    head = metrics[0]
    n_img = result.get("images_per_prompt", 1) * (head.n or 0)
    scorer = ", ".join(f"{k} {v}" for k, v in result.get("scorer", {}).items())
    out = [f"{result.get('benchmark', 'toy')}: {head.n} prompts, {n_img} images ({setting}"
           + (f"; {scorer})" if scorer else ")"), "",
           markdown_table(["metric (higher is better)", "score", "prompts"],
                          [[_label(m), _value(m), "" if m.n is None else str(m.n)] for m in metrics])]
    if result.get("note"):
        out += ["", f"Note: {result['note']}."]
    out += ["", f"({result['seconds']:.0f} s)"]
    return "\n".join(out)


def judge_table(acc: dict) -> str:
    rows = [[skill, f"{100 * v['true']:.2f}", f"{100 * v['false']:.2f}", str(v["n"])]
            for skill, v in acc.items()]
    return markdown_table(["skill", "true questions right %", "falsified questions right %",
                           "questions"], rows)


# --- bench run: the comparison table, read from result files only -------------------------
def _metric_values(e: EvalRecord) -> dict[str, tuple[float, float]]:
    """key -> (value, stderr): the primary and secondary metrics, the KL, then the breakdown."""
    def pick(role):
        return {m.key: (m.value, 0.0 if m.stderr is None else m.stderr) for m in e.metrics if m.role == role}
    kl = e.kl_to_pretrained or {}
    return {**pick("primary"), **pick("secondary"), "kl": (kl.get("mean"), kl.get("stderr")),
            **pick("detail")}


def _summary(evals: list[EvalRecord], bases: list[EvalRecord]) -> dict[str, tuple[float, float]]:
    """Metric -> (mean, stderr): over seeds when there are several, else over prompts (skills
    and atom counts have no per-prompt stderr in the result files: 0 for one seed)."""
    per = [_metric_values(e) for e in evals]
    deltas = [d for e, b in zip(evals, bases) if e.paired is not None and b.paired is not None
              and (d := delta_vs(e, b, e.paired.key)) is not None]
    out = {}
    for k in per[0]:
        if len(per) == 1:
            out[k] = per[0][k]
        else:
            vals = [p[k][0] for p in per if k in p]
            out[k] = (float(np.mean(vals)), stderr(vals))
    if deltas:
        key = f"delta_{evals[0].paired.key}"
        out[key] = deltas[0] if len(deltas) == 1 else (
            float(np.mean([d[0] for d in deltas])), stderr([d[0] for d in deltas]))
    return out


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    digits: int | None  # None: scientific
    better: str | None  # "max", "min" or None; the best trained method per column is marked
    headline: bool = True  # in the headline table (the rest: the breakdown)


def table_columns(records: list[dict], metrics: list[Metric] | None = None) -> list[Column]:
    """The comparison's columns: training reward, primary metrics, Δ of the paired one and
    whether it beats the base, the breakdown, secondary metrics, KL, training time; then any
    other numeric key of the records (the table may gain some)."""
    metrics = metrics or []

    def of(role):
        return [Column(m.key, m.title, m.digits, None if m.higher_is_better is None else
                       ("max" if m.higher_is_better else "min"), role != "detail")
                for m in metrics if m.role == role]
    paired = next((m for m in metrics if m.paired and m.role == "primary"), None)
    delta = [Column(f"delta_{paired.key}", f"Δ{paired.title.split()[-1]} vs base", paired.digits, "max"),
             Column("beats_base", "beats base", None, None),
             Column("vs_reference", f"Δ{paired.title.split()[-1]} vs reference [95 % CI]", None, None)
             ] if paired is not None else []
    groups = list(dict.fromkeys(c.key.rpartition(":")[0] for c in of("detail")))

    def order(c):
        name = c.key.rpartition(":")[2]
        return groups.index(c.key.rpartition(":")[0]), (0, int(name), "") if name.isdigit() else (1, 0, name)
    cost = [Column("kl", "KL to pretrained", None, "min"), Column("wall_min", "train min", 1, "min"),
            Column("alarm", "reward hacking?", None, None)]
    cols = ([Column("train_reward", "train reward (epoch 1 → last 3)", None, None)] + of("primary") + delta
            + sorted(of("detail"), key=order) + of("secondary") + cost)
    keys = {k for r in records for k in r}
    known = {"model", "method", "seeds", "reference"} | {c.key for c in cols}
    extra = [k for k in sorted(keys) if k not in known and not k.endswith("_stderr")
             and any(isinstance(r.get(k), (int, float)) for r in records)]
    cols += [Column(k, k, 3, None, headline=False) for k in extra]
    return [c for c in cols if any(c.key in r for r in records)]


def run_metrics(run: Run) -> list[Metric]:
    """The metrics the run's final evaluations describe, in the order of the first one that has each."""
    seen: dict[str, Metric] = {}
    for e in [*(b.final for b in run.bases), *(r.final for rs in run.results().values() for r in rs)]:
        for m in e.metrics:
            seen.setdefault(m.key, m)
    return list(seen.values())


def headline_keys(cols: list[Column]) -> set[str]:
    """The columns a reader compares first; the rest (skills, atom counts) are detail."""
    return {c.key for c in cols if c.headline}


def best_methods(records: list[dict], cols: list[Column]) -> dict[tuple[str, str], str]:
    """{(model, column key): method} for the best trained method (not the base model), where
    a model has at least two trained methods with a value in that column."""
    best = {}
    for c in cols:
        if c.better is None:
            continue
        for model in {r["model"] for r in records}:
            trained = [r for r in records if r["model"] == model and not r["method"].startswith("base")
                       and isinstance(r.get(c.key), (int, float)) and np.isfinite(r[c.key])]
            if len(trained) > 1:
                pick = max if c.better == "max" else min
                best[(model, c.key)] = pick(trained, key=lambda r: r[c.key])["method"]
    return best


def format_cell(record: dict, key: str, digits: int | None) -> str:
    """A record's value as text: `mean ± stderr` when it has a stderr, '' when absent."""
    value, se = record.get(key), record.get(key + "_stderr")
    if not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if se is not None and abs(se) <= 1e-9 * abs(value):  # identical seeds (the base model's copies)
        se = 0.0  # up to rounding in the mean: no error bar
    if digits is None:  # KL spans orders of magnitude
        text = f"{value:.2e}"
        return text if not se else f"{text} ± {se:.1e}"
    text = f"{value:.{digits}f}"
    return text if not se else f"{text} ± {se:.{digits}f}"


def _reward_change(rs: list[CellResult]) -> str:
    first = np.mean([r.train_reward["first"] for r in rs])
    se = np.mean([r.train_reward["first_stderr"] for r in rs])
    last = np.mean([r.train_reward["last"] for r in rs])
    return f"{first:.3f} ± {se:.3f} → {last:.3f}"


def _vs_reference(paired: list[PairedDiff], model: str, method: str, headline: Metric | None) -> str:
    """The record's text for its headline's paired difference to the reference method."""
    if headline is None:
        return ""
    if any(d.reference == method and d.model == model for d in paired):
        return "reference"
    d = next((d for d in paired if (d.model, d.method, d.key) == (model, method, headline.key)), None)
    return "" if d is None else f"{d.text(headline.digits)} vs {d.reference}"


def run_records(run: Run, paired: list[PairedDiff] | None = None,
                alarms: list[HackingAlarm] | None = None) -> list[dict]:
    """One record per model × method (the base model first): mean and stderr of every metric
    over the finished seeds; with the paired difference of its headline to the reference
    method and its alarms."""
    results = run.results()
    records = []
    for model in sorted({m for m, _ in results}):
        base_list = [b.final for b in run.bases_of(model)]
        entries = [("base (pretrained)", base_list, base_list, None)]
        entries += [(method, [r.final for r in rs], [r.base for r in rs], rs)
                    for (m, method), rs in sorted(results.items()) if m == model]
        for name, evals, bs, rs in entries:
            if not evals:
                continue
            s = _summary(evals, bs)
            rec = {"model": model, "method": name, "seeds": len(evals),
                   **{k: v[0] for k, v in s.items()}, **{k + "_stderr": v[1] for k, v in s.items()}}
            delta = next((k for k in s if k.startswith("delta_")), None)
            if rs is None:  # the base model: no training, Δ 0 by definition
                for k in (delta, f"{delta}_stderr"):
                    rec.pop(k, None)
            else:
                if delta is not None:
                    rec["beats_base"] = "yes" if s[delta][0] > s[delta][1] else "no"
                rec["wall_min"] = float(np.mean([r.wall_seconds for r in rs])) / 60
                if rs[0].train_reward:
                    rec["train_reward"] = _reward_change(rs)
                rec["vs_reference"] = _vs_reference(paired or [], model, name, evals[0].paired)
                flagged = [a for a in alarms or [] if (a.model, a.method) == (model, name)]
                rec["alarm"] = f"{len(flagged)}/{len(rs)} seeds" if flagged else "no"
            records.append(rec)
    return records


NOTE = ("Train reward: the mean over the first epoch's rollouts (± its stderr) and over the last "
        "three epochs. Mean ± stderr (over seeds where there are several, else over eval prompts; ΔGM "
        "is paired with the base model on the same prompts and noise). 'beats base': ΔGM > its "
        "stderr. 'vs reference': the difference to the reference method, paired over seeds and "
        "prompts, with a 95 % two-way bootstrap interval (report/paired.md; * where it excludes 0). "
        "'reward hacking?': seeds whose training reward rose while a held-out score fell by more than "
        "its stderr. Soft-TIFA, skills and GM by number of atoms 0-100; KL per element, summed over "
        "sampling steps (lower is closer to the pretrained model); train min: minutes of training "
        "per seed. The best trained method per column is in bold.")


@dataclass
class Comparison:
    """A run's comparison: one record per model × method, its columns, the best per column."""
    records: list[dict]
    columns: list[Column]
    best: dict[tuple[str, str], str]
    reward: str = ""
    scored_on: str = ""
    """Which prompts the final scores come from, where benchmarks have splits."""
    reference: str | None = None
    paired: list[PairedDiff] = field(default_factory=list)
    alarms: list[HackingAlarm] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    """The run's metric descriptions (titles, digits)."""
    precisions: dict[str, int] = field(default_factory=dict)
    """How many cells' final scores were computed in each precision (eval.precision)."""
    mixed_seeds: int = 0
    """Seeds whose trained cells were scored in more than one precision: only there does a
    paired difference (method − reference, seed by seed) include bf16's rounding."""

    @property
    def mixed_precision(self) -> str:
        """A warning when cells were scored in different precisions (a sharded run on
        machines with and without bf16 units, under "bf16-native"), else ""."""
        if len(self.precisions) < 2:
            return ""
        counts = ", ".join(f"{n} in {p}" for p, n in sorted(self.precisions.items()))
        pairs = (f"on {self.mixed_seeds} seed(s) the methods' cells differ, so their paired differences "
                 f"include it" if self.mixed_seeds else
                 "every seed's cells share one precision, so the paired differences between methods "
                 "do not include it (the spread over seeds and the differences to the base model may)")
        return (f"the cells' scores were computed in different precisions ({counts}); "
                f"bf16 moves a cell's GM by up to 0.7 (docs/results.md): {pairs}.")

    @property
    def note(self) -> str:
        return (NOTE + (f" Final scores on {self.scored_on}." if self.scored_on else "")
                + (f" Warning: {self.mixed_precision}" if self.mixed_precision else ""))


def _scored_on(results: dict) -> str:
    """"geneval2 test (800 prompts), pickscore test (539 prompts)" from a run's final records."""
    final = next((r.final for rs in results.values() for r in rs), None)
    if final is None:
        return ""
    parts = []
    for name, result in final.benchmarks.items():
        n = next((m.n for m in final.metrics if m.benchmark == name and m.n), None)
        if "split" in result:
            parts.append(f"{name} {result['split']}" + (f" ({n} prompts)" if n else ""))
    return ", ".join(parts)


def _precision(r) -> set[str]:
    return {b.get("precision", "unrecorded") for b in r.final.benchmarks.values()}


def precision_counts(results: dict[tuple[str, str], list[CellResult]]) -> dict[str, int]:
    """How many cells' final scores were computed in each precision (eval.precision)."""
    counts: dict[str, int] = {}
    for rs in results.values():
        for r in rs:
            for p in _precision(r):
                counts[p] = counts.get(p, 0) + 1
    return counts


def mixed_precision_seeds(results: dict[tuple[str, str], list[CellResult]]) -> int:
    """How many (model, seed) have trained cells scored in different precisions."""
    per_seed: dict[tuple, set] = {}
    for (model, _), rs in results.items():
        for r in rs:
            per_seed.setdefault((model, r.seed), set()).update(_precision(r))
    return sum(len(p) > 1 for p in per_seed.values())


def default_reference(methods: list[str]) -> str | None:
    """Flow-GRPO where it ran (the method the others claim to improve on), else the first."""
    return "grpo" if "grpo" in methods else (methods[0] if methods else None)


def comparison(run: Run | str | Path, reference: str | None = None) -> Comparison:
    """The comparison of a run (read here from its directory where given a path: the files the
    tables need); `reference`: the method the others are paired against (default:
    `default_reference`)."""
    run = run if isinstance(run, Run) else load_run(run, figures=False)
    results = run.results()
    methods = sorted({method for _, method in results})
    reference = reference or default_reference(methods)
    paired = paired_differences(results, reference) if reference in methods else []
    alarms = reward_hacking(results)
    records = run_records(run, paired, alarms)
    metrics = run_metrics(run)
    cols = table_columns(records, metrics)
    reward = next((r.reward for rs in results.values() for r in rs), "")
    return Comparison(records, cols, best_methods(records, cols), reward, _scored_on(results), reference,
                      paired, alarms, metrics, precision_counts(results), mixed_precision_seeds(results))


def markdown_comparison(c: Comparison) -> str:
    if not c.records or all(r["method"].startswith("base") for r in c.records):
        return "no finished method x seed cells yet"
    header = ["model", "method", "seeds"] + [
        col.title.replace("train reward", f"train reward {c.reward}") if col.key == "train_reward"
        else col.title for col in c.columns]
    rows = []
    for r in c.records:
        cells = [r["model"], r["method"], str(r["seeds"])]
        for col in c.columns:
            text = format_cell(r, col.key, col.digits)
            cells.append(f"**{text}**" if c.best.get((r["model"], col.key)) == r["method"] else text)
        rows.append(cells)
    return markdown_table(header, rows) + "\n\n" + c.note
