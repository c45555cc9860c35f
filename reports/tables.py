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


def eval_table(result: dict) -> str:
    """The in-domain Soft-TIFA table and the ood preference score of one `bench eval` result."""
    t = result["soft_tifa"]
    head = (f"Soft-TIFA on the toy eval split ({t['n_prompts']} prompts, {t['n_images']} images; "
            f"{result['steps']} ODE steps, guidance {result['guidance']}, seed {result['seed']})")
    rows = [["Soft-TIFA GM (prompt level)", f"{t['gm']:.1f} ± {t['gm_stderr']:.1f}"],
            ["Soft-TIFA AM (atom level)", f"{t['am']:.1f} ± {t['am_stderr']:.1f}"]]
    rows += [[f"skill: {k}", f"{v:.1f}"] for k, v in t["per_skill"].items()]
    rows += [[f"atoms = {k} (GM)", f"{v:.1f}"] for k, v in t["per_atom_count"].items()]
    out = [head, "", markdown_table(["metric (0-100, higher is better)", "score"], rows)]
    if "preference_ood" in result:
        p = result["preference_ood"]
        out += ["", f"Preference score (toy PickScore, raw) on the ood split ({p['n']} prompts): "
                    f"{p['mean']:.2f} ± {p['stderr']:.2f}"]
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
    """Metric -> (mean, stderr): over seeds when there are several, else over prompts."""
    def metric(e):
        t = e["soft_tifa"]
        return {"gm": (t["gm"], t["gm_stderr"]), "am": (t["am"], t["am_stderr"]),
                "pref": (e["preference_ood"]["mean"], e["preference_ood"]["stderr"]),
                "kl": (e["kl_to_pretrained"]["mean"], e["kl_to_pretrained"]["stderr"]),
                **{f"skill:{k}": (v, 0.0) for k, v in t["per_skill"].items()}}
    per = [metric(e) for e in evals]
    deltas = []
    for e, b in zip(evals, bases):
        d = np.array(e["soft_tifa"]["per_prompt_gm"]) - np.array(b["soft_tifa"]["per_prompt_gm"])
        deltas.append((100 * d.mean(), 100 * stderr(d)))
    out = {}
    keys = per[0].keys()
    for k in keys:
        if len(per) == 1:
            out[k] = per[0][k]
        else:
            vals = [p[k][0] for p in per]
            out[k] = (float(np.mean(vals)), stderr(vals))
    out["delta_gm"] = deltas[0] if len(deltas) == 1 else (
        float(np.mean([d[0] for d in deltas])), stderr([d[0] for d in deltas]))
    return out


def _reward_change(rs: list[dict]) -> str:
    first = np.mean([r["train_reward"]["first"] for r in rs])
    se = np.mean([r["train_reward"]["first_stderr"] for r in rs])
    last = np.mean([r["train_reward"]["last"] for r in rs])
    return f"{first:.3f} ± {se:.3f} → {last:.3f}"


def run_table(run_dir: Path) -> tuple[str, list[dict]]:
    results, bases = _collect(run_dir)
    if not results:
        return "no finished method x seed cells yet", []
    rows, records = [], []
    skills = sorted({k for rs in results.values() for r in rs
                     for k in r["final"]["soft_tifa"]["per_skill"]})
    models = sorted({m for m, _ in results})
    for model in models:
        base_list = [b for (m, _), b in sorted(bases.items()) if m == model]
        entries = [("base (pretrained)", base_list, base_list, None)]
        for (m, method), rs in sorted(results.items()):
            if m == model:
                entries.append((method, [r["final"] for r in rs], [r["base"] for r in rs], rs))
        for name, evals, bs, rs in entries:
            s = _summary(evals, bs)
            n_seeds = len(evals)
            wall = "" if rs is None else f"{np.mean([r['wall_seconds'] for r in rs]) / 60:.1f}"
            delta = "" if rs is None else _pm(*s["delta_gm"])
            beats = "" if rs is None else ("yes" if s["delta_gm"][0] > s["delta_gm"][1] else "no")
            train = "" if rs is None or "train_reward" not in rs[0] else _reward_change(rs)
            rows.append([model, name, str(n_seeds), train, _pm(*s["gm"]), _pm(*s["am"]), delta, beats,
                         *[f"{s.get('skill:' + k, (float('nan'),))[0]:.1f}" for k in skills],
                         _pm(*s["pref"], 2), f"{s['kl'][0]:.2e} ± {s['kl'][1]:.1e}", wall])
            records.append({"model": model, "method": name, "seeds": n_seeds,
                            **{k: v[0] for k, v in s.items()},
                            **{k + "_stderr": v[1] for k, v in s.items()}})
    reward = next((r.get("reward", "") for rs in results.values() for r in rs), "")
    header = ["model", "method", "seeds", f"train reward {reward} (epoch 1 → last 3)", "Soft-TIFA GM",
              "Soft-TIFA AM", "ΔGM vs base",
              "beats base", *skills, "ood preference", "KL to pretrained", "train min"]
    note = ("Train reward: the mean over the first epoch's rollouts (± its stderr) and over the last "
            "three epochs. Mean ± stderr (over seeds where there are several, else over eval prompts; ΔGM is "
            "paired with the base model on the same prompts and noise). 'beats base': ΔGM > its "
            "stderr. Soft-TIFA and skills 0-100; KL per element, summed over sampling steps.")
    return markdown_table(header, rows) + "\n\n" + note, records


def write_run_tables(run_dir: str | Path) -> str:
    import pandas as pd

    from harness.io import _atomic

    run_dir = Path(run_dir)
    md, records = run_table(run_dir)
    report = run_dir / "report"
    _atomic(report / "tables.md", lambda tmp: Path(tmp).write_text(md + "\n"))
    if records:
        _atomic(report / "tables.csv", lambda tmp: pd.DataFrame(records).to_csv(tmp, index=False))
    return md
