"""Method against method (reports/paired.py) and the reward-hacking alarm (reports/alarms.py)
on hand-made results: a known difference is found, a null one is not; a hacked cell is
flagged, a clean one is not; the report and the CLI carry both."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from flowarena.core.results import CellResult, EvalRecord, Metric
from flowarena.harness.cli import app
from flowarena.reports.alarms import reward_hacking
from flowarena.reports.paired import bootstrap_mean, paired_differences

PROMPTS = 60


def _record(gm: np.ndarray, kl: float, pref: float = 17.0) -> EvalRecord:
    """An evaluation with Soft-TIFA GM per prompt (0–1, shown 0–100), AM, an ood score, the KL."""
    gm = np.clip(gm, 0, 1)
    am = np.clip(gm + 0.2, 0, 1)
    se = 100 * gm.std(ddof=1) / np.sqrt(len(gm))
    return EvalRecord(
        [Metric("gm", "Soft-TIFA GM", 100 * gm.mean(), se, len(gm), paired=True, per_prompt=gm.tolist()),
         Metric("am", "Soft-TIFA AM", 100 * am.mean(), se, len(gm), per_prompt=am.tolist()),
         Metric("pref", "ood preference", pref, 0.3, 4, digits=2, role="secondary")],
        {}, {"mean": kl, "stderr": kl / 10})


def _cell(method, seed, gm, base, kl=1e-3, reward=(0.3, 0.4)) -> CellResult:
    return CellResult(method, seed, "toy", 10, 60.0, _record(gm, kl), base, {
        "first": reward[0], "first_stderr": 0.02, "last": reward[1], "last_epochs": 3})


def _results(shift: float, seeds: int = 3, seed: int = 0) -> dict:
    """grpo and dppo on the same prompts per seed: prompt difficulty shared, dppo `shift` higher
    (in GM's 0–1 units), training noise per seed and per cell."""
    rng = np.random.default_rng(seed)
    out: dict = {("toy", "grpo"): [], ("toy", "dppo"): []}
    for s in range(seeds):
        difficulty = rng.uniform(0.3, 0.8, PROMPTS)
        base = _record(difficulty, 0.0)
        for method, add in (("grpo", 0.0), ("dppo", shift)):
            gm = difficulty + add + rng.normal(0, 0.01) + rng.normal(0, 0.05, PROMPTS)
            out[("toy", method)].append(_cell(method, s, gm, base))
    return out


def test_a_known_difference_is_found_and_a_null_one_is_not():
    found = {d.key: d for d in paired_differences(_results(0.04), "grpo")}
    gm = found["gm"]
    assert (gm.method, gm.reference, gm.seeds, gm.prompts) == ("dppo", "grpo", 3, PROMPTS)
    assert gm.excludes_zero and gm.low < 4.0 < gm.high and gm.mean == pytest.approx(4.0, abs=1.0)
    assert found["am"].excludes_zero and gm.text().endswith("*")
    assert found["kl"].prompts is None and found["kl"].seeds == 3  # the KL: per seed only
    null = {d.key: d for d in paired_differences(_results(0.0), "grpo")}
    assert not null["gm"].excludes_zero and null["gm"].low < 0 < null["gm"].high
    assert "*" not in null["gm"].text()


def test_the_bootstrap_interval_has_the_normal_width_and_is_reproducible():
    rng = np.random.default_rng(1)
    d = rng.normal(2.0, 1.0, (4, 200))
    low, high, se = bootstrap_mean(d)
    assert (low, high, se) == bootstrap_mean(d)  # a fixed generator: the same table every time
    assert low < d.mean() < high
    # with no seed or prompt effect at all, resampling both overstates the stderr of the 800
    # independent values (1 / √800) by up to √3 (the two-way bootstrap is conservative)
    assert 1 / np.sqrt(800) < se < 1.1 * np.sqrt(3 / 800)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    with pytest.raises(ValueError, match="one value"):
        bootstrap_mean(np.array([[1.0]]))


def test_one_seed_pairs_over_prompts_and_power_scales_with_seeds():
    one = {d.key: d for d in paired_differences(_results(0.04, seeds=1), "grpo")}
    assert one["gm"].seeds == 1 and one["gm"].low is not None  # the prompts still vary
    assert one["kl"].low is None and one["kl"].text(None).endswith("(no interval)")
    three = {d.key: d for d in paired_differences(_results(0.04, seeds=3), "grpo")}["gm"]
    assert three.resolvable() == pytest.approx(2.8 * three.se)
    need = three.seeds_for(three.resolvable() / 2)  # half the resolvable difference: ≈ 4 × the seeds
    assert need == pytest.approx(4 * three.seeds, abs=1)
    assert three.seeds_for(100.0) == 2


def test_a_reward_hacked_cell_is_flagged_and_a_clean_one_is_not():
    """The `sanity` preset's pattern: the training reward 0.11 → 0.37 while the held-out GM
    falls from 59.7 to 16; beside it a cell whose reward and GM both rise."""
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0.4, 0.8, PROMPTS)
    base = _record(difficulty, 0.0)
    hacked = _cell("dppo", 0, difficulty - 0.44, base, reward=(0.11, 0.37))
    clean = _cell("grpo", 0, difficulty + 0.03, base, reward=(0.11, 0.30))
    flat = _cell("cps", 0, difficulty - 0.44, base, reward=(0.11, 0.115))  # reward within its stderr
    alarms = reward_hacking({("toy", "dppo"): [hacked], ("toy", "grpo"): [clean], ("toy", "cps"): [flat]})
    assert [(a.method, a.seed) for a in alarms] == [("dppo", 0)]
    line = alarms[0].line()
    assert line.startswith("reward hacking? toy dppo seed 0: the training reward rose 0.110 → 0.370")
    assert "held-out Soft-TIFA GM fell" in line and "Soft-TIFA AM" in line and "ood" not in line


def test_the_report_and_bench_report_carry_the_comparison(tmp_path):
    from flowarena.reports.report import build_report
    from tests.test_report import make_run

    run = make_run(tmp_path / "run", seeds=(0, 1))
    out = build_report(run)
    paired = (run / "report" / "paired.md").read_text()
    assert paired.startswith("Method against grpo, paired") and "| toy   | dppo   | grpo |" in paired
    assert "two-way bootstrap" in paired
    assert "toy_paired.png" in {p.name for p in out["figures"]}
    page = out["index"].read_text()
    assert "Method against grpo, paired" in page
    table = (run / "report" / "tables.md").read_text()
    assert "ΔGM vs reference [95 % CI]" in table and " vs grpo " in table and "| reference " in table
    r = CliRunner().invoke(app, ["report", str(run), "--reference", "dppo"])
    assert r.exit_code == 0, r.output
    assert (run / "report" / "paired.md").read_text().startswith("Method against dppo, paired")
    r = CliRunner().invoke(app, ["report", str(run), "--reference", "cps"])
    assert r.exit_code == 1
    assert "error: --reference cps is not among the run's methods (grpo, dppo)" in r.output


def test_the_terminal_summary_fits_100_columns(tmp_path, monkeypatch):
    from flowarena.reports.summary import terminal_summary
    from flowarena.reports.tables import comparison
    from tests import test_report

    long = "dppo-sampled-kl@delta=3e-6"  # a variant's name, cut to fit
    monkeypatch.setitem(test_report.METHOD_CONFIG, long, test_report.METHOD_CONFIG["dppo"])
    run = test_report.make_run(tmp_path / "run", methods=("grpo", "dppo", long), seeds=(0, 1))
    text = terminal_summary(comparison(run))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100  # header, rule, 4 rows, legend, the verdict vs base
    assert lines[7].startswith("vs the pretrained model (ΔGM): ")
    assert [h.strip() for h in lines[0].split("|")[1:5]] == ["method", "seeds", "GM", "Δ vs grpo [95 % CI]"]
    assert "hacking?" in lines[0] and "reference" in text and "dppo-sampled-kl@d…" in text
    narrow = terminal_summary(comparison(run), width=80)  # the ood score and the KL go first
    assert "| KL" not in narrow and "ood" not in narrow and "hacking?" in narrow


def test_cells_scored_in_different_precisions_are_flagged():
    """Under "bf16-native" a sharded run on machines with and without bf16 units scores its
    cells in different precisions: the comparison says so, a uniform run does not, and it
    tells whether the paired differences mix precisions (a seed's cells on two machines)."""
    from flowarena.reports.tables import Comparison, mixed_precision_seeds, precision_counts

    results = _results(0.0)
    cells = [c for rs in results.values() for c in rs]
    for c in cells:
        c.final.benchmarks["toy"] = {"precision": "float32"}
    uniform = Comparison([], [], {}, precisions=precision_counts(results))
    assert uniform.precisions == {"float32": len(cells)} and uniform.mixed_precision == ""
    cells[0].final.benchmarks["toy"]["precision"] = "bfloat16"
    mixed = Comparison([], [], {}, precisions=precision_counts(results),
                       mixed_seeds=mixed_precision_seeds(results))
    assert "1 in bfloat16" in mixed.mixed_precision
    assert f"{len(cells) - 1} in float32" in mixed.mixed_precision
    assert mixed.mixed_seeds == 1 and "on 1 seed(s) the methods' cells differ" in mixed.mixed_precision
    assert mixed.mixed_precision in mixed.note and uniform.note == uniform.note.split(" Warning:")[0]
    for c in cells:  # a whole seed on a bf16 machine: every pair within one precision
        c.final.benchmarks["toy"]["precision"] = "bfloat16" if c.seed == cells[0].seed else "float32"
    by_seed = Comparison([], [], {}, precisions=precision_counts(results),
                         mixed_seeds=mixed_precision_seeds(results))
    assert by_seed.mixed_seeds == 0 and "2 in bfloat16" in by_seed.mixed_precision
    assert "every seed's cells share one precision" in by_seed.mixed_precision


def test_a_variant_s_long_name_leaves_the_paired_figure_its_panels():
    """`--methods x@key=value@…` names a method at length: the figure names the methods once, left
    of the first panel, and widens for them (four panels each naming them collapsed to zero)."""
    import io
    import warnings
    from pathlib import Path

    from flowarena.core.rundir import CellPaths
    from flowarena.reports.figures.paired import paired_intervals
    from flowarena.reports.run_reader import CellData, Run

    long = "mixgrpo@post_compress=0.4@solver=dpm++2m"
    cells = [CellData("toy", c.method, c.seed, CellPaths(Path(f"/r/toy/{c.method}/seed{c.seed}")), {}, c)
             for (_, method), results in _results(0.04).items() for c in results]
    for c in cells:
        if c.method == "dppo":
            c.method = c.result.method = long
    fig = paired_intervals(Run(Path("/r"), None, cells, [], []), "toy")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [long]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed"
        fig.savefig(io.BytesIO(), format="png")
