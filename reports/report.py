"""`bench report RUN_DIR`: the tables, every figure and one HTML page, from result files only."""

from __future__ import annotations

import logging
from pathlib import Path

from flowarena.core.io import atomic_write
from flowarena.core.rundir import RunDir
from flowarena.reports.figures import load_run, render_all
from flowarena.reports.html import write_index
from flowarena.reports.table_files import FLOOR_NOTE, noise_floor_rows, write_run_tables
from flowarena.reports.tables import markdown_table

log = logging.getLogger(__name__)


def build_report(run_dir: str | Path, reference: str | None = None) -> dict:
    """Write report/tables.{md,csv}, report/paired.md, report/figures/*.png and
    report/index.html under run_dir; `reference`: the method the others are paired against
    (default: grpo where it ran). Absent or half-written result files are skipped; returns
    {"figures": [paths], "missing": [what was skipped and why], "index": path}."""
    run_dir, rundir = Path(run_dir), RunDir(run_dir)
    run = load_run(run_dir)
    run.reference = reference
    try:
        write_run_tables(run, reference)
    except Exception as e:  # a malformed result.json must not cost the figures
        log.exception("tables failed")
        run.missing.append(f"report/tables.md: not written ({type(e).__name__}: {e})")
    header, rows = noise_floor_rows(run.cells)
    if rows:
        text = markdown_table(header, rows) + "\n\n" + FLOOR_NOTE + "\n"
        path = rundir.report / "noise_floor.md"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    out = rundir.figures
    figures = render_all(run, out)
    # a figure of an earlier report that this one no longer draws would otherwise look current
    keep = {f["path"].name for f in figures}
    for stale in out.glob("*.png"):
        if stale.name not in keep:
            stale.unlink()
    index = write_index(run_dir, figures, run)
    if run.missing:
        log.warning("report of %s: %d files missing or unreadable, skipped:\n  %s", run_dir,
                    len(run.missing), "\n  ".join(run.missing))
    return {"figures": [f["path"] for f in figures], "missing": list(run.missing), "index": index}
