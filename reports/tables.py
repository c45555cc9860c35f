"""Plain-text / Markdown tables from result dicts (reports read results, never models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.soft_tifa import stderr


def _row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [_row([str(c) for c in r], widths) for r in rows]
    return "\n".join(lines)


def _soft_tifa_rows(t: dict, name: str = "Soft-TIFA") -> list[list[str]]:
    rows = [[f"{name} GM (prompt level)", f"{t['gm']:.1f} ± {t['gm_stderr']:.1f}"],
            [f"{name} AM (atom level)", f"{t['am']:.1f} ± {t['am_stderr']:.1f}"]]
    rows += [[f"skill: {k}", f"{v:.1f}"] for k, v in t["per_skill"].items()]
    return rows + [[f"atoms = {k} (GM)", f"{v:.1f}"] for k, v in t["per_atom_count"].items()]


def eval_table(result: dict) -> str:
    """The table of one `bench eval` result, whichever benchmark it ran."""
    bench = result.get("benchmark", "toy")
    setting = f"{result['steps']} ODE steps, guidance {result['guidance']}, seed {result['seed']}"
    metric = ["metric (0-100, higher is better)", "score"]
    if bench == "toy":
        t = result["soft_tifa"]
        out = [f"Soft-TIFA on the toy eval split ({t['n_prompts']} prompts, {t['n_images']} images; "
               f"{setting})", "", markdown_table(metric, _soft_tifa_rows(t))]
        if "preference_ood" in result:
            p = result["preference_ood"]
            out += ["", f"Preference score (toy PickScore, raw) on the ood split ({p['n']} prompts): "
                        f"{p['mean']:.2f} ± {p['stderr']:.2f}"]
    elif bench == "geneval2":
        t, h, v = result["soft_tifa"], result["tifa"], result["vqascore"]
        rows = _soft_tifa_rows(t) + [
            ["TIFA (hard answers, atom level)", _pm(h["am"], h["am_stderr"])],
            ["TIFA, every question right (prompt level)", _pm(h["gm"], h["gm_stderr"])],
            ["VQAScore", _pm(v["mean"], v["stderr"])]]
        judge = result.get("scorer", {}).get("judge", "the default judge")
        out = [f"GenEval2 ({t['n_prompts']} prompts, {t['n_images']} images; judge {judge}; {setting})",
               "", markdown_table(metric, rows)]
    elif bench == "geneval":
        g = result["geneval"]
        rows = [["overall (mean over tags)", _pm(g["overall"], g["overall_stderr"])]]
        rows += [[f"tag: {k}", f"{v:.1f}"] for k, v in g["per_tag"].items()]
        out = [f"GenEval ({g['n_prompts']} prompts, {g['n_images']} images; {setting})", "",
               markdown_table(["accuracy % (higher is better)", "score"], rows)]
    else:
        p = result["pickscore"]
        out = [f"PickScore (raw) over {p['n']} prompts ({setting}): {p['mean']:.2f} ± {p['stderr']:.2f}"]
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
def _pm(mean: float, se: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _read(path: Path) -> dict | None:
    """A result file, or None when it is half-written or unreadable (the report lists it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _collect(run_dir: Path) -> tuple[dict, dict]:
    """{(model, method): [result per seed]}, {(model, seed): base eval}; unreadable files skipped."""
    results: dict[tuple, list] = {}
    bases: dict[tuple, dict] = {}
    for path in sorted(run_dir.glob("*/*/seed*/result.json")):
        if (r := _read(path)) is not None:
            results.setdefault((r["model"], r["method"]), []).append(r)
    for path in sorted(run_dir.glob("*/base/seed*/eval.json")):
        if (b := _read(path)) is not None:
            bases[(path.parts[-4], int(path.parent.name[4:]))] = b
    return results, bases


def _summary(evals: list[dict], bases: list[dict]) -> dict[str, tuple[float, float]]:
    """Metric -> (mean, stderr): over seeds when there are several, else over prompts (skills
    and atom counts have no per-prompt stderr in the result files: 0 for one seed)."""
    def metric(e):
        t = e["soft_tifa"]
        return {"gm": (t["gm"], t["gm_stderr"]), "am": (t["am"], t["am_stderr"]),
                "pref": (e["preference_ood"]["mean"], e["preference_ood"]["stderr"]),
                "kl": (e["kl_to_pretrained"]["mean"], e["kl_to_pretrained"]["stderr"]),
                **{f"skill:{k}": (v, 0.0) for k, v in t["per_skill"].items()},
                **{f"atoms:{k}": (v, 0.0) for k, v in t.get("per_atom_count", {}).items()}}
    per = [metric(e) for e in evals]
    deltas = []
    for e, b in zip(evals, bases):
        d = np.array(e["soft_tifa"]["per_prompt_gm"]) - np.array(b["soft_tifa"]["per_prompt_gm"])
        deltas.append((100 * d.mean(), 100 * stderr(d)))
    out = {}
    for k in per[0]:
        if len(per) == 1:
            out[k] = per[0][k]
        else:
            vals = [p[k][0] for p in per if k in p]
            out[k] = (float(np.mean(vals)), stderr(vals))
    out["delta_gm"] = deltas[0] if len(deltas) == 1 else (
        float(np.mean([d[0] for d in deltas])), stderr([d[0] for d in deltas]))
    return out


# Columns of the comparison table: (record key, title, digits (None: scientific), better).
# `better` is "max", "min" or None; the best trained method per column is marked.
_HEAD = [("train_reward", "train reward (epoch 1 → last 3)", None, None),
         ("gm", "Soft-TIFA GM", 1, "max"), ("am", "Soft-TIFA AM", 1, "max"),
         ("delta_gm", "ΔGM vs base", 1, "max"), ("beats_base", "beats base", None, None)]
_TAIL = [("pref", "ood preference", 2, "max"), ("kl", "KL to pretrained", None, "min"),
         ("wall_min", "train min", 1, "min")]


def table_columns(records: list[dict]) -> list[tuple]:
    """The columns of the comparison table for these records: the fixed ones, each skill
    and each atom count present, then any other numeric key (the table may gain some)."""
    keys = {k for r in records for k in r}
    skills = sorted(k for k in keys if k.startswith("skill:") and not k.endswith("_stderr"))
    atoms = sorted((k for k in keys if k.startswith("atoms:") and not k.endswith("_stderr")),
                   key=lambda k: int(k[6:]))
    cols = (_HEAD + [(k, k[6:], 1, "max") for k in skills]
            + [(k, f"GM @{k[6:]} atoms", 1, "max") for k in atoms] + _TAIL)
    known = {"model", "method", "seeds"} | {c[0] for c in cols}
    cols += [(k, k, 3, None) for k in sorted(keys) if k not in known and not k.endswith("_stderr")
             and any(isinstance(r.get(k), (int, float)) for r in records)]
    return cols


def headline_keys() -> set[str]:
    """The columns a reader compares first; the rest (skills, atom counts) are detail."""
    return {c[0] for c in _HEAD + _TAIL}


def best_methods(records: list[dict], cols: list[tuple]) -> dict[tuple[str, str], str]:
    """{(model, column key): method} for the best trained method (not the base model), where
    a model has at least two trained methods with a value in that column."""
    best = {}
    for key, _, _, better in cols:
        if better is None:
            continue
        for model in {r["model"] for r in records}:
            trained = [r for r in records if r["model"] == model and not r["method"].startswith("base")
                       and isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
            if len(trained) > 1:
                pick = max if better == "max" else min
                best[(model, key)] = pick(trained, key=lambda r: r[key])["method"]
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


def _reward_change(rs: list[dict]) -> str:
    first = np.mean([r["train_reward"]["first"] for r in rs])
    se = np.mean([r["train_reward"]["first_stderr"] for r in rs])
    last = np.mean([r["train_reward"]["last"] for r in rs])
    return f"{first:.3f} ± {se:.3f} → {last:.3f}"


def run_records(run_dir: Path, collected: tuple[dict, dict] | None = None) -> list[dict]:
    """One record per model × method (the base model first): mean and stderr of every metric
    over the finished seeds, read from result files only (or from `_collect`'s output)."""
    results, bases = collected or _collect(run_dir)
    records = []
    for model in sorted({m for m, _ in results}):
        base_list = [b for (m, _), b in sorted(bases.items()) if m == model]
        entries = [("base (pretrained)", base_list, base_list, None)]
        entries += [(method, [r["final"] for r in rs], [r["base"] for r in rs], rs)
                    for (m, method), rs in sorted(results.items()) if m == model]
        for name, evals, bs, rs in entries:
            if not evals:
                continue
            s = _summary(evals, bs)
            rec = {"model": model, "method": name, "seeds": len(evals),
                   **{k: v[0] for k, v in s.items()}, **{k + "_stderr": v[1] for k, v in s.items()}}
            if rs is None:  # the base model: no training, ΔGM 0 by definition
                for k in ("delta_gm", "delta_gm_stderr"):
                    rec.pop(k)
            else:
                rec["beats_base"] = "yes" if s["delta_gm"][0] > s["delta_gm"][1] else "no"
                rec["wall_min"] = float(np.mean([r["wall_seconds"] for r in rs])) / 60
                if "train_reward" in rs[0]:
                    rec["train_reward"] = _reward_change(rs)
            records.append(rec)
    return records


NOTE = ("Train reward: the mean over the first epoch's rollouts (± its stderr) and over the last "
        "three epochs. Mean ± stderr (over seeds where there are several, else over eval prompts; ΔGM "
        "is paired with the base model on the same prompts and noise). 'beats base': ΔGM > its "
        "stderr. Soft-TIFA, skills and GM by number of atoms 0-100; KL per element, summed over "
        "sampling steps (lower is closer to the pretrained model); train min: minutes of training "
        "per seed. The best trained method per column is in bold.")


def run_table(run_dir: Path) -> tuple[str, list[dict]]:
    """The comparison table in Markdown (best per column in bold) and its records."""
    results, bases = _collect(run_dir)  # read once, for the records and the reward's name
    records = run_records(run_dir, (results, bases))
    if not records or all(r["method"].startswith("base") for r in records):
        return "no finished method x seed cells yet", []
    cols = table_columns(records)
    best = best_methods(records, cols)
    reward = next((r.get("reward", "") for rs in results.values() for r in rs), "")
    header = ["model", "method", "seeds"] + [
        t.replace("train reward", f"train reward {reward}") if k == "train_reward" else t
        for k, t, _, _ in cols]
    rows = []
    for r in records:
        cells = [r["model"], r["method"], str(r["seeds"])]
        for key, _, digits, _ in cols:
            text = format_cell(r, key, digits)
            cells.append(f"**{text}**" if best.get((r["model"], key)) == r["method"] else text)
        rows.append(cells)
    return markdown_table(header, rows) + "\n\n" + NOTE, records


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\to$", "Δ": r"$\Delta$", "@": "@"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(c, c) for c in str(text))
    for sym, tex in _LATEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def latex_table(records: list[dict], caption: str = "") -> str:
    """The comparison as a booktabs `table` (best trained method per column in bold)."""
    cols = table_columns(records)
    best = best_methods(records, cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{ll" + "r" * (1 + len(cols)) + "}", r"\toprule",
             " & ".join(_tex(t) for t in ["model", "method", "seeds"] + [c[1] for c in cols]) + r" \\",
             r"\midrule"]
    for r in records:
        cells = [_tex(r["model"]), _tex(r["method"]), str(r["seeds"])]
        for key, _, digits, _ in cols:
            text = _tex(format_cell(r, key, digits))
            cells.append(rf"\textbf{{{text}}}" if best.get((r["model"], key)) == r["method"] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def write_run_tables(run_dir: str | Path) -> str:
    """report/tables.md, tables.csv (raw numbers) and tables.tex (booktabs) of a run directory."""
    import pandas as pd

    from harness.io import _atomic

    run_dir = Path(run_dir)
    md, records = run_table(run_dir)
    report = run_dir / "report"
    _atomic(report / "tables.md", lambda tmp: Path(tmp).write_text(md + "\n"))
    if records:
        _atomic(report / "tables.csv", lambda tmp: pd.DataFrame(records).to_csv(tmp, index=False))
        tex = latex_table(records, caption=NOTE)
        _atomic(report / "tables.tex", lambda tmp: Path(tmp).write_text(tex + "\n"))
    return md
