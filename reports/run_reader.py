"""A run directory read back, from its result files only (never a model): the one reader of
the tables, the figures and the page.

Every file that is absent or half-written is skipped and named in `Run.missing`, so a
running or interrupted run renders whatever exists. The paths are core/rundir.py's.

The base model's files, one rule: a seed's base evaluation is read when its eval.json is
(the curves' epoch 0, on the evaluation prompts) and, where final.json exists, that too: its
final scores are final.json's (the test sets) where it exists, else eval.json's; those are
what the trained cells' final scores compare with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import flowarena.tasks  # noqa: F401  (registers the reader of result schema 1)
from flowarena.core.identity import check_bases, misplaced
from flowarena.core.io import load_tensors
from flowarena.core.results import CellResult, EvalRecord, Manifest, ResultSchemaError
from flowarena.core.rundir import CellPaths, RunDir
from flowarena.reports.style import method_colours

DIAG_KEYS = ("ratio", "kl", "adv", "noise", "step", "inner")
"""Per sample of an SDE step: what the ratio figures read."""
FORWARD_KEYS = ("adv", "v_change", "step", "inner")
"""Per sample of a forward-process method's training time (nft, awm): no SDE step, no ratio figure."""


@dataclass
class BaseData:
    """The pretrained model's evaluation of one seed: <model>/base/seed<k>/."""
    model: str
    seed: int
    eval: EvalRecord
    """eval.json: the evaluation prompts' scores, every cell's epoch 0."""
    final: EvalRecord
    """final.json where the benchmarks have test sets, else eval.json: the tables' base row."""
    samples: Path | None = None


@dataclass
class CellData:
    """One method x seed directory: <model>/<method>/seed<k>/."""
    model: str
    method: str
    seed: int
    paths: CellPaths
    config: dict = field(default_factory=dict)
    result: CellResult | None = None
    """result.json; None while the cell runs (or where it is unreadable, named in `missing`)."""
    metrics: list[dict] = field(default_factory=list)
    evals: dict[int, EvalRecord] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    samples: Path | None = None

    @property
    def path(self) -> Path:
        return self.paths.root


@dataclass
class Run:
    path: Path
    manifest: Manifest | None  # None: absent or unreadable (named in missing)
    cells: list[CellData]
    bases: list[BaseData]
    missing: list[str]
    reference: str | None = None
    """The method the paired comparisons are against (None: the default, Flow-GRPO)."""

    def models(self) -> list[str]:
        return sorted({c.model for c in self.cells} | {b.model for b in self.bases})

    def methods(self, model: str) -> list[str]:
        return sorted({c.method for c in self.cells if c.model == model})

    def cells_of(self, model: str, method: str) -> list[CellData]:
        return [c for c in self.cells if c.model == model and c.method == method]

    def bases_of(self, model: str) -> list[BaseData]:
        return sorted((b for b in self.bases if b.model == model), key=lambda b: b.seed)

    def results(self) -> dict[tuple[str, str], list[CellResult]]:
        """{(model, method): [CellResult per finished seed, by seed]}."""
        out: dict[tuple[str, str], list[CellResult]] = {}
        for c in sorted(self.cells, key=lambda c: (c.model, c.method, c.seed)):
            if c.result is not None:
                out.setdefault((c.model, c.method), []).append(c.result)
        return out

    def colours(self) -> dict[str, str]:
        return method_colours(sorted({c.method for c in self.cells}))


class _Reader:
    """Reads a run's files, naming each absent or unreadable one in `missing`."""

    def __init__(self, rundir: RunDir):
        self.rundir, self.missing = rundir, []

    def skip(self, path: Path, why: str) -> None:
        self.missing.append(f"{self.rundir.relative(path)}: {why}")

    def json(self, path: Path, why_absent: str = "absent") -> dict | None:
        if not path.exists():
            return self.skip(path, why_absent)
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # ValueError covers JSON and UTF-8 decoding errors
            return self.skip(path, f"unreadable, skipped ({type(e).__name__})")
        return obj if isinstance(obj, dict) else self.skip(path, "not a JSON object, skipped")

    def typed(self, path: Path, kind, why_absent: str = "absent"):
        """An EvalRecord, CellResult or Manifest file, or None (named in `missing`)."""
        if (obj := self.json(path, why_absent)) is None:
            return None
        try:
            return kind.from_json(obj, self.rundir.relative(path))
        except ResultSchemaError as e:
            return self.skip(path, f"skipped ({e})")

    def metrics(self, path: Path) -> list[dict]:
        """metrics.jsonl rows; a half-written line (a crash mid-write, a copy of a live run) is skipped."""
        if not path.exists():
            self.skip(path, "absent")
            return []
        rows = []
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                self.missing.append(f"{self.rundir.relative(path)} line {i}: not valid JSON (half-written?), "
                                    "skipped")
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
            else:
                self.missing.append(f"{self.rundir.relative(path)} line {i}: no epoch, skipped")
        if not rows:
            self.skip(path, "no complete row yet")
        return rows

    def diagnostics(self, cell: CellData) -> None:
        files = cell.paths.diagnostic_files()
        if not files:
            self.skip(cell.paths.diagnostics_dir, "no epoch files")
        for epoch, path in files.items():
            try:
                t = load_tensors(path)
            except Exception as e:  # safetensors raises its own error types for a truncated file
                self.skip(path, f"unreadable, skipped ({type(e).__name__})")
                continue
            keys = FORWARD_KEYS if "v_change" in t else DIAG_KEYS
            if lacking := [k for k in keys if k not in t]:
                self.skip(path, f"lacks {', '.join(lacking)}, skipped")
                continue
            arrays = {k: t[k].double().numpy().ravel() for k in keys}
            if len({len(a) for a in arrays.values()}) != 1:
                self.skip(path, "tensors of unequal length, skipped")
                continue
            cell.diagnostics[epoch] = arrays

    def picture(self, path: Path) -> Path | None:
        return path if path.exists() else self.skip(path, "absent")


def _cell_config(config: dict) -> dict:
    """A cell's config.json; one written before `trust_region` was recorded gets it from the
    method settings of that time (the clip ε of the ratio methods, DPPO's δ)."""
    if "trust_region" not in config and isinstance(config.get("method_config"), dict):
        legacy = {"clip_range": "ratio_clip", "delta": "kl_threshold"}
        settings = config["method_config"]
        config = {**config, "trust_region": {new: settings[old] for old, new in legacy.items()
                                             if isinstance(settings.get(old), (int, float))}}
    return config


def load_run(run_dir: str | Path, figures: bool = True) -> Run:
    """Every readable result file of a run directory. `figures` False: only what the tables
    need (the manifest, each cell's config.json and result.json, the base evaluations), not
    the training metrics, evaluations during training, diagnostics and sample grids.
    Cells of one model trained from different base weights are a BaseMismatch: never paired."""
    rundir = RunDir(run_dir)
    read = _Reader(rundir)
    manifest = read.typed(rundir.manifest, Manifest)
    bases = []
    for b in rundir.bases():
        ev = read.typed(b.eval, EvalRecord)
        final = read.typed(b.final, EvalRecord) if b.final.exists() else ev
        samples = read.picture(b.samples) if figures else None
        if ev is not None and final is not None:
            bases.append(BaseData(b.model, b.seed, ev, final, samples))
    cells = []
    for paths in rundir.cells():
        cell = CellData(paths.model, paths.method, paths.seed, paths)
        cell.config = _cell_config(read.json(paths.config) or {})
        # figures do not need result.json, but the table does: say why a cell is not in it
        cell.result = read.typed(paths.result, CellResult,
                                 "absent (the cell has not finished; not in the table)")
        result = {"model": cell.result.model, "method": cell.result.method,
                  "seed": cell.result.seed} if cell.result is not None else {}
        why = [(path, w) for path, record in ((paths.config, cell.config), (paths.result, result))
               if (w := misplaced(record, cell.model, cell.method, cell.seed))]
        if why:  # a copy of another cell (cp -r seed0 seed1) is not another seed
            read.skip(*why[0])
            continue
        if figures:
            cell.metrics = read.metrics(paths.metrics)
            for epoch, path in paths.evals().items():
                if (ev := read.typed(path, EvalRecord)) is not None:
                    cell.evals[epoch] = ev
            read.diagnostics(cell)
            cell.samples = read.picture(paths.samples)
        cells.append(cell)
    check_bases(manifest.config if manifest is not None else None,  # never pair other weights' cells
                [(c.model, rundir.relative(c.path), c.config.get("base")) for c in cells])
    return Run(rundir.root, manifest, cells, bases, read.missing)
