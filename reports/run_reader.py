"""A run directory read back for the figures, from its result files only (never a model).

Every file that is absent or half-written is skipped and named in `Run.missing`, so a
running or interrupted run renders whatever exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowarena.core.identity import check_bases, misplaced
from flowarena.core.io import load_tensors
from flowarena.core.results import CellResult, EvalRecord, Manifest, ResultSchemaError
from flowarena.reports.style import method_colours

DIAG_KEYS = ("ratio", "kl", "adv", "noise", "step", "inner")


@dataclass
class CellData:
    """One method x seed directory: <model>/<method>/seed<k>/."""
    model: str
    method: str
    seed: int
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evals: dict[int, EvalRecord] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    samples: Path | None = None


@dataclass
class Run:
    path: Path
    manifest: Manifest | None  # None: absent or unreadable (named in missing)
    cells: list[CellData]
    bases: dict[tuple[str, int], EvalRecord]  # (model, seed) -> base eval.json
    base_samples: dict[tuple[str, int], Path]
    missing: list[str]
    reference: str | None = None
    """The method the paired comparisons are against (None: the default, Flow-GRPO)."""

    def models(self) -> list[str]:
        return sorted({c.model for c in self.cells} | {m for m, _ in self.bases})

    def methods(self, model: str) -> list[str]:
        return sorted({c.method for c in self.cells if c.model == model})

    def cells_of(self, model: str, method: str) -> list[CellData]:
        return [c for c in self.cells if c.model == model and c.method == method]

    def colours(self) -> dict[str, str]:
        return method_colours(sorted({c.method for c in self.cells}))


def _read_json(path: Path, run: Path, missing: list[str], why_absent: str = "absent") -> dict | None:
    rel = path.relative_to(run)
    if not path.exists():
        missing.append(f"{rel}: {why_absent}")
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError covers JSON and UTF-8 decoding errors
        missing.append(f"{rel}: unreadable, skipped ({type(e).__name__})")
        return None
    if not isinstance(obj, dict):
        missing.append(f"{rel}: not a JSON object, skipped")
        return None
    return obj


def _cell_config(config: dict) -> dict:
    """A cell's config.json; one written before `trust_region` was recorded gets it from the
    method settings of that time (the clip ε of the ratio methods, DPPO's δ)."""
    if "trust_region" not in config and isinstance(config.get("method_config"), dict):
        legacy = {"clip_range": "ratio_clip", "delta": "kl_threshold"}
        settings = config["method_config"]
        config = {**config, "trust_region": {new: settings[old] for old, new in legacy.items()
                                             if isinstance(settings.get(old), (int, float))}}
    return config


def _read_eval(path: Path, run: Path, missing: list[str]) -> EvalRecord | None:
    if (obj := _read_json(path, run, missing)) is None:
        return None
    try:
        return EvalRecord.from_json(obj, str(path.relative_to(run)))
    except ResultSchemaError as e:
        missing.append(f"{path.relative_to(run)}: skipped ({e})")
        return None


def _read_result(path: Path, run: Path, missing: list[str]) -> dict | None:
    """result.json as read (None: absent, unreadable or not a cell result, named in `missing`)."""
    obj = _read_json(path, run, missing, "absent (the cell has not finished; not in the table)")
    if obj is None:
        return None
    try:
        CellResult.from_json(obj, str(path.relative_to(run)))
    except ResultSchemaError as e:
        missing.append(f"{path.relative_to(run)}: skipped ({e})")
        return None
    return obj


def _read_metrics(path: Path, run: Path, missing: list[str]) -> list[dict]:
    """metrics.jsonl rows; a half-written line (a crash mid-write, a copy of a live run) is skipped."""
    rel = path.relative_to(run)
    if not path.exists():
        missing.append(f"{rel}: absent")
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            missing.append(f"{rel} line {i}: not valid JSON (half-written?), skipped")
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            missing.append(f"{rel} line {i}: no epoch, skipped")
    if not rows:
        missing.append(f"{rel}: no complete row yet")
    return rows


def _read_diagnostics(cell: CellData, run: Path, missing: list[str]) -> None:
    files = sorted((cell.path / "diagnostics").glob("epoch_*.safetensors"))
    if not files:
        missing.append(f"{(cell.path / 'diagnostics').relative_to(run)}: no epoch files")
    for path in files:
        m = re.fullmatch(r"epoch_(\d+)\.safetensors", path.name)
        if not m:
            continue
        try:
            t = load_tensors(path)
        except Exception as e:  # safetensors raises its own error types for a truncated file
            missing.append(f"{path.relative_to(run)}: unreadable, skipped ({type(e).__name__})")
            continue
        lacking = [k for k in DIAG_KEYS if k not in t]
        if lacking:
            missing.append(f"{path.relative_to(run)}: lacks {', '.join(lacking)}, skipped")
            continue
        arrays = {k: t[k].double().numpy().ravel() for k in DIAG_KEYS}
        if len({len(a) for a in arrays.values()}) != 1:
            missing.append(f"{path.relative_to(run)}: tensors of unequal length, skipped")
            continue
        cell.diagnostics[int(m.group(1))] = arrays


def load_run(run_dir: str | Path) -> Run:
    run = Path(run_dir)
    missing: list[str] = []
    manifest = None
    if (obj := _read_json(run / "manifest.json", run, missing)) is not None:
        try:
            manifest = Manifest.from_json(obj, "manifest.json")
        except ResultSchemaError as e:
            missing.append(f"manifest.json: skipped ({e})")
    bases, base_samples = {}, {}
    for d in sorted(run.glob("*/base/seed*")):
        seed = int(d.name[4:]) if d.name[4:].isdigit() else None
        if seed is None:
            continue
        ev = _read_eval(d / "eval.json", run, missing)
        if ev is not None:
            bases[(d.parts[-3], seed)] = ev
        if (d / "samples.png").exists():
            base_samples[(d.parts[-3], seed)] = d / "samples.png"
        else:
            missing.append(f"{(d / 'samples.png').relative_to(run)}: absent")
    cells = []
    for d in sorted(run.glob("*/*/seed*")):
        model, method = d.parts[-3], d.parts[-2]
        if method == "base" or model == "report" or not d.is_dir() or not d.name[4:].isdigit():
            continue
        cell = CellData(model, method, int(d.name[4:]), d)
        cell.config = _cell_config(_read_json(d / "config.json", run, missing) or {})
        # figures do not need result.json, but the table does: say why a cell is not in it
        result = _read_result(d / "result.json", run, missing)
        why = [f"{(d / name).relative_to(run)}: {w}" for name, record in (("config.json", cell.config),
                                                                          ("result.json", result or {}))
               if (w := misplaced(record, model, method, cell.seed))]
        if why:  # a copy of another cell (cp -r seed0 seed1) is not another seed
            missing.append(why[0])
            continue
        cell.metrics = _read_metrics(d / "metrics.jsonl", run, missing)
        for p in sorted((d / "eval").glob("*.json")):
            if p.stem.isdigit() and (ev := _read_eval(p, run, missing)) is not None:
                cell.evals[int(p.stem)] = ev
        _read_diagnostics(cell, run, missing)
        final = d / "samples" / "final.png"
        if final.exists():
            cell.samples = final
        else:
            missing.append(f"{final.relative_to(run)}: absent")
        cells.append(cell)
    check_bases(manifest.config if manifest is not None else None,  # never pair other weights' cells
                [(c.model, str(c.path.relative_to(run)), c.config.get("base")) for c in cells])
    return Run(run, manifest, cells, bases, base_samples, missing)
