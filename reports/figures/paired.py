"""Method against the reference method: each paired difference with its 95 % interval."""

from __future__ import annotations

from matplotlib.figure import Figure

from flowarena.reports.run_reader import Run
from flowarena.reports.style import method_colours


def paired_intervals(run: Run, model: str) -> Figure | None:
    """One panel per compared metric (GM, AM, out-of-domain, KL): each method's difference to
    the reference with its interval, 0 marked; filled where the interval excludes 0."""
    from flowarena.reports.tables import comparison

    diffs = [d for d in comparison(run, run.reference).paired if d.model == model and d.low is not None]
    if not diffs:
        return None
    keys = list(dict.fromkeys(d.key for d in diffs))
    methods = sorted({d.method for d in diffs})
    colours = method_colours(methods)
    # the methods named once, left of the first panel: a variant's name (x@key=value@…) is long
    label = 0.07 * max(len(m) for m in methods)
    fig = Figure(figsize=(3.2 * len(keys) + label, 0.5 * len(methods) + 1.6), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False, sharey=True)[0], keys):
        row = [d for d in diffs if d.key == key]
        for d in row:
            y = methods.index(d.method)
            ax.errorbar(d.mean, y, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=3,
                        color=colours[d.method], mfc=colours[d.method] if d.excludes_zero else "white")
        ax.axvline(0, color="#444", lw=0.8, ls="--")
        ax.set_yticks(range(len(methods)), methods)
        ax.set_ylim(-0.6, len(methods) - 0.4)
        ax.set_title(f"Δ {row[0].title} vs {row[0].reference}", fontsize=9)
        if key == "kl":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
    fig.suptitle(f"{model}: paired over {diffs[0].seeds} seed(s) and the evaluation prompts, 95 % intervals",
                 fontsize=9)
    return fig
