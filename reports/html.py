"""One self-contained report page: report/index.html with the comparison table and every figure
embedded as a data URI, so it opens offline, can be mailed, and needs no JavaScript."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

from flowarena.core.io import atomic_write
from flowarena.core.results import Manifest
from flowarena.core.rundir import RunDir
from flowarena.reports.figures import Run, load_run
from flowarena.reports.table_files import FLOOR_NOTE, PAIRED_NOTE, noise_floor_rows, paired_rows
from flowarena.reports.tables import Comparison, comparison, format_cell, headline_keys, markdown_comparison

log = logging.getLogger(__name__)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1rem 1.5rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; margin-top: 1.2rem; }
.meta { color: #555; font-size: 0.9rem; } .warn { background: #fff4e0; padding: 0.5rem 0.8rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f2f2f2; white-space: normal; }  td.name { text-align: left; } tr.base td { color: #666; }
td.best { font-weight: bold; background: #eef6ee; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; margin-top: 0.3rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""

def tables_html(c: Comparison) -> str:
    """The comparison as two HTML tables, so that each fits a laptop screen: the headline
    scores, then the breakdown (per skill, per atom count). The best method per score column
    (among trained methods, within a model) is in bold."""
    if not c.records or all(r["method"].startswith("base") for r in c.records):
        return "<p>No finished method × seed cell yet.</p>"
    headline = headline_keys(c.columns)
    out = table_html(c.records, [col for col in c.columns if col.key in headline], c.best)
    if detail := [col for col in c.columns if col.key not in headline]:
        out += "<h3>Breakdown (by skill and by number of atoms)</h3>" + table_html(c.records, detail, c.best)
    return out


def table_html(records: list[dict], cols: list[tuple], best: dict) -> str:
    """One HTML table of these columns of the records."""
    titles = ["model", "method", "seeds"] + [c.title for c in cols]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    rows = []
    for r in records:
        is_base = r["method"].startswith("base")
        cells = [f'<td class="name">{html.escape(str(r["model"]))}</td>',
                 f'<td class="name">{html.escape(str(r["method"]))}</td>', f"<td>{r.get('seeds', '')}</td>"]
        for col in cols:
            is_delta = col.key.startswith("delta_")
            text = "—" if is_base and is_delta else html.escape(format_cell(r, col.key, col.digits))
            cls = ' class="best"' if best.get((r["model"], col.key)) == r["method"] else ""
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f'<tr{" class=base" if is_base else ""}>' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(rows) + "</tbody></table></div>")


def _rows_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _manifest_html(manifest: Manifest | None) -> str:
    if manifest is None:
        return '<p class="warn">No readable manifest.json: the run\'s settings are unknown.</p>'
    cfg = manifest.config
    parts = [("methods", ", ".join(map(str, cfg.get("methods", [])))), ("model", cfg.get("model")),
             ("preset", cfg.get("preset")), ("seeds", cfg.get("seeds")), ("status", manifest.status),
             ("started", manifest.started), ("seconds", manifest.seconds), ("command", manifest.command)]
    text = " · ".join(f"{k}: {html.escape(str(v))}" for k, v in parts if v not in (None, ""))
    if manifest.versions:
        text += "<br>versions: " + html.escape(", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
    out = f'<p class="meta">{text}</p>'
    if manifest.status != "done":
        out += (f'<p class="warn">The run\'s status is <b>{html.escape(manifest.status)}</b>: '
                "this page shows what had been written when it was built.</p>")
    return out


def write_index(run_dir: str | Path, figures: list[dict] | None = None, run: Run | None = None) -> Path:
    """Write run_dir/report/index.html. `figures` ([{path, caption}], as reports.figures.render_all
    returns) defaults to the PNGs in report/figures; `run` (its manifest and missing files) to
    reports.figures.load_run(run_dir)."""
    run_dir, rundir = Path(run_dir), RunDir(run_dir)
    report = rundir.report
    run = load_run(run_dir) if run is None else run
    missing = list(run.missing)
    if figures is None:
        figures = [{"path": p, "caption": p.stem} for p in sorted(rundir.figures.glob("*.png"))]
    try:
        comp = comparison(run, run.reference)
        markdown = markdown_comparison(comp)
    except Exception as e:  # a malformed result.json must not cost the figures
        log.exception("comparison table failed")
        comp, markdown = Comparison([], [], {}), ""
        missing.append(f"comparison table: failed ({type(e).__name__}: {e})")

    title = f"FlowArena report: {html.escape(run_dir.resolve().name)}"
    body = [f"<h1>{title}</h1>", _manifest_html(run.manifest),
            "<h2>Comparison</h2>", tables_html(comp),
            f"<p class=meta>{html.escape(comp.note)} Also in report/: tables.md, tables.csv, tables.tex.</p>"]
    if markdown:
        body.append("<details><summary>The table as Markdown</summary>"
                    f"<pre>{html.escape(markdown)}</pre></details>")
    if comp.alarms:
        body += ["<h2>Reward hacking?</h2>", "<ul>" + "".join(f"<li>{html.escape(a.line())}</li>"
                                                             for a in comp.alarms) + "</ul>"]
    header, rows = paired_rows(comp)
    if rows:
        body += [f"<h2>Method against {html.escape(comp.reference or '')}, paired</h2>",
                 _rows_html(header, rows),
                 f"<p class=meta>{html.escape(PAIRED_NOTE)} The figure of paired intervals below draws "
                 "them.</p>"]
    header, rows = noise_floor_rows(run.cells)
    if rows:
        body += ["<h2>Ratio noise floor</h2>", _rows_html(header, rows),
                 f"<p class=meta>{html.escape(FLOOR_NOTE)}</p>"]
    body.append("<h2>Figures</h2>")
    for f in figures:
        path = Path(f["path"])
        try:
            src = _img(path)
        except OSError:
            missing.append(f"{path.name}: figure file unreadable")
            continue
        caption = html.escape(f.get("caption", path.stem))
        body.append(f'<figure id="{html.escape(path.stem)}"><img src="{src}" alt="{caption}">'
                    f"<figcaption>{caption}</figcaption></figure>")
    body.append("<h2>Missing</h2>")
    if missing:
        body.append("<p>Absent or unreadable files, left out of this page:</p><ul>"
                    + "".join(f"<li><code>{html.escape(m)}</code></li>" for m in missing) + "</ul>")
    else:
        body.append("<p>Nothing: every expected result file was read.</p>")
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = report / "index.html"
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
