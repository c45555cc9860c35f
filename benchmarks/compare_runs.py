"""Are two run directories the same computation? Compares, cell by cell, every number a run
computes (metrics.jsonl, every evaluation through the typed reader: metric values, per-prompt
scores, the KL; the diagnostics tensors; result.json's training reward) and the comparison
tables, leaving out only wall-clock times. Exit code 0 when bit-identical, 1 otherwise.

    python benchmarks/compare_runs.py runs/before runs/after

Used to check that a refactor changed nothing a run computes (the two runs may come from
different code versions: evaluations of result schema 1 and 2 read alike; metrics that only
one of them logs are named, and the others compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import flowarena.tasks  # noqa: F401  (registers the reader of result schema 1)
from flowarena.core.io import load_tensors
from flowarena.core.results import CellResult, EvalRecord, ResultSchemaError, read_json

TIMING = {"wall_seconds", "rollout_s", "update_s", "baseline_s", "seconds"}
NOTES: set[str] = set()


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in path.read_text().splitlines() if line.strip()]


def _eval(path: Path) -> dict:
    e = EvalRecord.from_json(read_json(path), str(path))
    return {"epoch": e.epoch, "kl": e.kl_to_pretrained,
            "metrics": {m.key: (m.value, m.stderr, m.per_prompt) for m in e.metrics}}


def _table(path: Path) -> list[str]:
    """tables.md without the training-time column (the last before the note)."""
    rows = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    drop = head.index("train min") if "train min" in head else None
    out = []
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if drop is not None and len(cells) == len(head):
            cells.pop(drop)
        out.append("|".join(cells))
    return out


def compare(a: Path, b: Path) -> list[str]:
    diffs = []
    cells_a = sorted(p.relative_to(a) for p in a.glob("*/*/seed*") if p.is_dir())
    cells_b = sorted(p.relative_to(b) for p in b.glob("*/*/seed*") if p.is_dir())
    if cells_a != cells_b:
        diffs.append(f"cells differ: {cells_a} vs {cells_b}")
    for cell in cells_a:
        ca, cb = a / cell, b / cell
        evals = sorted(p.name for p in (ca / "eval").glob("*.json")) or ["eval.json"]
        for name in evals:
            pa = ca / "eval" / name if (ca / "eval").is_dir() else ca / name
            pb = cb / "eval" / name if (cb / "eval").is_dir() else cb / name
            try:
                same = _eval(pa) == _eval(pb)
            except ResultSchemaError as e:
                diffs.append(f"{cell}/{name}: {e}")
                continue
            if not same:
                diffs.append(f"{cell}/{name}: evaluations differ")
        ma = ca / "metrics.jsonl"
        if ma.exists():
            rows_a, rows_b = _metrics(ma), _metrics(cb / "metrics.jsonl")
            common = [(ra.keys() & rb.keys(), ra, rb) for ra, rb in zip(rows_a, rows_b)]
            if len(rows_a) != len(rows_b) or any(ra[k] != rb[k] for keys, ra, rb in common for k in keys):
                diffs.append(f"{cell}/metrics.jsonl differs")
            added = sorted({k for keys, ra, rb in common for k in (ra.keys() | rb.keys()) - keys})
            if added:  # a newer version logs more (e.g. the noise floor): named, not a difference
                NOTES.add(f"metrics only one run logs: {', '.join(added)}")
        for p in sorted((ca / "diagnostics").glob("*.safetensors")):
            ta, tb = load_tensors(p), load_tensors(cb / "diagnostics" / p.name)
            if ta.keys() != tb.keys() or any(not ta[k].equal(tb[k]) for k in ta):
                diffs.append(f"{cell}/diagnostics/{p.name} differs")
        if (ca / "result.json").exists():
            ra = CellResult.from_json(read_json(ca / "result.json"))
            rb = CellResult.from_json(read_json(cb / "result.json"))
            if ra.train_reward != rb.train_reward or ra.epochs != rb.epochs:
                diffs.append(f"{cell}/result.json: training reward differs")
    ta, tb = a / "report" / "tables.md", b / "report" / "tables.md"
    if _table(ta) != _table(tb):
        diffs.append("report/tables.md differs (beyond the training time)")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    diffs = compare(args.before, args.after)
    n = len([p for p in args.before.glob("*/*/seed*") if p.is_dir()])
    for d in diffs:
        print(d)
    for note in sorted(NOTES):
        print(f"note: {note}")
    verdict = "bit-identical (wall times aside)" if not diffs else f"{len(diffs)} differences"
    print(f"{n} cells compared: {verdict}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
