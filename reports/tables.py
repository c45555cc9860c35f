"""Plain-text / Markdown tables from result dicts (reports read results, never models)."""

from __future__ import annotations


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
