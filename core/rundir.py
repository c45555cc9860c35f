"""The layout of a run directory, named in one place: the harness writes it, the reports read it.

    <run>/manifest.json                      command, resolved config, versions, status, sessions
    <run>/<model>/base/seed<k>/              the pretrained model: eval.json, final.json (the test
                                             sets' scores, where the benchmarks have them),
                                             samples.png, prompts.json, .lock
    <run>/<model>/<method>/seed<k>/          one cell: config.json metrics.jsonl result.json
                                             eval/<epoch>.json eval/final.json checkpoints/latest/
                                             diagnostics/epoch_XXXX.safetensors samples/final.png
                                             samples/prompts.json .lock
    <run>/.locks/                            run.lock or shard-I-of-N.lock, manifest.lock
    <run>/logs/job-K-of-N.log                `bench run --jobs N`
    <run>/report/                            tables, figures/, index.html
    <run>/tensorboard/<model>/<method>/seed<k>   `--log-to tensorboard`

Only the names live here; what the files hold is core/results.py's. Old runs keep being read
and resumed: these names never change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BASE = "base"
"""The method directory of the pretrained model's evaluations."""
RESERVED = frozenset({"report", "logs", "tensorboard", "wandb"})
"""Top-level folders that are not models."""
_SEED = re.compile(r"seed(\d+)")
_DIAG = re.compile(r"epoch_(\d+)\.safetensors")


def seed_of(path: Path) -> int | None:
    """k of a folder named seed<k>, else None."""
    m = _SEED.fullmatch(path.name)
    return None if m is None else int(m.group(1))


@dataclass(frozen=True)
class SeedDir:
    """<run>/<model>/<method or base>/seed<k>/: one seed's folder of a trained cell or of the base."""
    root: Path

    @property
    def model(self) -> str:
        return self.root.parts[-3]

    @property
    def seed(self) -> int | None:
        return seed_of(self.root)


@dataclass(frozen=True)
class CellPaths(SeedDir):
    """The files of one method × seed: <run>/<model>/<method>/seed<k>/."""

    @property
    def method(self) -> str:
        return self.root.parts[-2]

    @property
    def run(self) -> RunDir | None:
        """The run directory the cell is in (None: a path too short to be inside one)."""
        return RunDir(self.root.parents[2]) if len(self.root.parents) > 2 else None

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def result(self) -> Path:
        """The cell's mark of being done."""
        return self.root / "result.json"

    @property
    def done(self) -> bool:
        return self.result.exists()

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval(self, epoch: int | str) -> Path:
        """eval/<epoch>.json (epoch 0: the base model's evaluation; "final": the test sets')."""
        return self.eval_dir / f"{epoch}.json"

    @property
    def final_eval(self) -> Path:
        return self.eval("final")

    def evals(self) -> dict[int, Path]:
        """{epoch: eval/<epoch>.json} of the evaluations on disk (not final.json)."""
        found = self.eval_dir.glob("*.json") if self.eval_dir.is_dir() else []
        return dict(sorted((int(p.stem), p) for p in found if p.stem.isdigit()))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The checkpoint a resumed cell starts from."""
        return self.checkpoints / "latest"

    @property
    def diagnostics_dir(self) -> Path:
        return self.root / "diagnostics"

    def diagnostics(self, epoch: int) -> Path:
        return self.diagnostics_dir / f"epoch_{epoch:04d}.safetensors"

    def diagnostic_files(self) -> dict[int, Path]:
        """{epoch: diagnostics/epoch_XXXX.safetensors} of the files on disk."""
        found = self.diagnostics_dir.glob("epoch_*.safetensors") if self.diagnostics_dir.is_dir() else []
        return {int(m.group(1)): p for p in sorted(found) if (m := _DIAG.fullmatch(p.name))}

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def samples(self) -> Path:
        """The final sample grid (its prompts beside it, prompts.json)."""
        return self.samples_dir / "final.png"

    @property
    def lock(self) -> Path:
        """Held by the process training the cell."""
        return self.root / ".lock"


@dataclass(frozen=True)
class BasePaths(SeedDir):
    """The pretrained model's evaluation of one seed: <run>/<model>/base/seed<k>/."""

    @property
    def eval(self) -> Path:
        """The evaluation prompts' scores: every cell's epoch 0."""
        return self.root / "eval.json"

    @property
    def final(self) -> Path:
        """The test sets' scores, where the benchmarks have test sets."""
        return self.root / "final.json"

    def scores(self, test_sets: bool) -> list[Path]:
        """The score files an evaluation writes: eval.json, and final.json with test sets."""
        return [self.eval, self.final] if test_sets else [self.eval]

    @property
    def final_scores(self) -> Path:
        """What a trained cell's final scores compare with: final.json where it exists, else
        eval.json (benchmarks without test sets score the evaluation prompts once)."""
        return self.final if self.final.exists() else self.eval

    @property
    def samples(self) -> Path:
        return self.root / "samples.png"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.json"

    @property
    def lock(self) -> Path:
        """Held by the process evaluating the base model of this seed."""
        return self.root / ".lock"


class RunDir:
    """Every path of a run directory (`bench run --out`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def relative(self, path: Path) -> str:
        """`path` as a report names it: relative to the run."""
        return str(Path(path).relative_to(self.root))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    # --- cells and base evaluations ---------------------------------------------------------
    def cell(self, model: str, method: str, seed: int) -> CellPaths:
        return CellPaths(self.root / model / method / f"seed{seed}")

    def base(self, model: str, seed: int) -> BasePaths:
        return BasePaths(self.root / model / BASE / f"seed{seed}")

    def _seed_dirs(self) -> Iterator[Path]:
        """<model>/<method>/seed<k> folders on disk, sorted (the base model's too)."""
        for d in sorted(self.root.glob("*/*/seed*")):
            model = d.parts[-3]
            if d.is_dir() and seed_of(d) is not None and model not in RESERVED and not model.startswith("."):
                yield d

    def cells(self) -> list[CellPaths]:
        """The cells on disk (finished or not), by model, method and seed."""
        found = [CellPaths(d) for d in self._seed_dirs() if d.parts[-2] != BASE]
        return sorted(found, key=lambda c: (c.model, c.method, c.seed))

    def bases(self) -> list[BasePaths]:
        """The base model's evaluation folders on disk, by model and seed."""
        found = [BasePaths(d) for d in self._seed_dirs() if d.parts[-2] == BASE]
        return sorted(found, key=lambda b: (b.model, b.seed))

    def finished(self, cells: set[tuple[str, str, int]] | None = None) -> int:
        """How many cells have their result.json (of `cells`, (model, method, seed), where given:
        a command that adds a method to a run counts its own)."""
        return sum(c.done for c in self.cells() if cells is None or (c.model, c.method, c.seed) in cells)

    def has_results(self) -> bool:
        """Whether any cell or base evaluation has written a file (a run without any can start over)."""
        return any(any(d.iterdir()) for d in self._seed_dirs())

    # --- locks, logs, the report ------------------------------------------------------------
    @property
    def locks(self) -> Path:
        return self.root / ".locks"

    @property
    def run_lock(self) -> Path:
        """Held by an unsharded `bench run`."""
        return self.locks / "run.lock"

    def shard_lock(self, i: int, n: int) -> Path:
        """Held by `bench run --shard I/N`."""
        return self.locks / f"shard-{i}-of-{n}.lock"

    def shard_locks(self) -> list[Path]:
        return sorted(self.locks.glob("shard-*.lock"))

    @property
    def manifest_lock(self) -> Path:
        """Held for the moment a process rewrites the manifest."""
        return self.locks / "manifest.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def job_log(self, k: int, n: int) -> Path:
        """The output of job K of `bench run --jobs N`."""
        return self.logs / f"job-{k}-of-{n}.log"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def figures(self) -> Path:
        return self.report / "figures"

    def tensorboard(self, model: str, method: str, seed: int) -> Path:
        """A cell's TensorBoard event files (`--log-to tensorboard`)."""
        return self.root / "tensorboard" / model / method / f"seed{seed}"
