"""What a benchmark is: which prompts, how images are scored, which metrics it reports.

`Benchmark.evaluate` draws each prompt's images with the ODE from noise seeded per prompt
(`seed`, prompt index, image index), so an image does not depend on `--limit` or on how
prompts are batched, and two models evaluated with the same seed see the same noise. It
scores in chunks as images come. Under torchrun each rank draws and scores a contiguous share
of the chunks, and the per-prompt results are gathered before the summary, so every rank gets
the single process's scores (`methods.dist.share`). The scorer (a judge, a detector,
PickScore) is loaded on first use and kept, so a run that evaluates many cells loads it once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from flowarena.core.errors import FlowArenaError
from flowarena.core.fields import Images, Limit, NonNegative, Steps, Whole
from flowarena.core.registry import Registry
from flowarena.core.results import Metric
from flowarena.methods import dist
from flowarena.models.base import FlowModel
from flowarena.tasks.prompts import PromptFileError, subset


class BenchmarkError(FlowArenaError, ValueError):
    """Unknown benchmark, or options it does not take."""


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark", BenchmarkError)
register_benchmark = BENCHMARKS.register
CHUNK = 16  # prompts sampled and scored together; the unit the ranks share out


@dataclass
class EvalRequest:
    """One evaluation of one model: what `Benchmark.evaluate` reads, and `bench eval`'s options
    (each field is one, its docstring the help)."""
    prompts: str | None = None
    """A prompt file instead of the benchmark's own (geneval2 / geneval format, or one prompt
    per line for pickscore)."""
    limit: Limit | None = None
    """Only this many prompts, spread evenly over the set (a quick look; None: all)."""
    images_per_prompt: Images | None = None
    """Images per prompt (None: the benchmark's; GenEval uses 4, GenEval2 1)."""
    steps: Steps | None = None
    """ODE sampling steps (None: the model's, 20 for toy; with --run, the run's)."""
    guidance: NonNegative | None = None
    """Classifier-free guidance scale (1.0 = no CFG; None: the model's, 4.5 for toy; with
    --run, the run's)."""
    seed: Whole = 0
    """Seed of the initial noise (same seed, same noise for every model)."""
    ood: bool = True
    """toy: also score the ood split with the toy preference model."""


class Benchmark:
    name: str = ""
    description: str = ""
    """One line for `bench benchmarks`."""
    images_per_prompt: int = 1
    options: tuple[str, ...] = ()
    """The scorer's model options it takes (`judge`, `detector`, `clip`, `pickscore`, ...)."""
    test_set: bool = True
    """Whether the end of a training run scores it afresh on its test prompts (`split="test"`,
    `final_limit` of them); without one (the toy), the last evaluation is the final one."""
    out_of_domain: bool = False
    """Whether its prompts are the out-of-domain ones (`ood_limit` between epochs)."""

    def __init__(self, device: str = "cpu", **options):
        bad = sorted(k for k, v in options.items() if v is not None and k not in self.options)
        if bad:
            takes = f"it takes {', '.join(self.options)}" if self.options else "it takes none"
            raise BenchmarkError(f"benchmark {self.name} has no option {bad[0]!r} ({takes})")
        self.device = device
        self.settings = {k: v for k, v in options.items() if v is not None}
        self._scorer = None

    # --- what a benchmark defines ---------------------------------------------------------
    def prompts(self, path: str | Path | None = None, split: str = "test") -> list[dict]:
        """Its prompt records (or those of a user's file in a format it reads): the test set,
        or with `split="val"` the prompts a training run is measured on between epochs."""
        raise NotImplementedError

    def run_prompts(self, settings, final: bool = False) -> list[dict]:
        """The prompt records `run_options` names (a missing or malformed file raises here)."""
        opts = self.run_options(settings, final)
        return self.prompts(opts.get("prompts"), opts.get("split", "val"))

    def run_options(self, settings, final: bool = False) -> dict:
        """`evaluate`'s prompt options inside a training run, from its eval settings (fields of
        `harness.run.config.EvalSettings`): between epochs or, with `final`, at the end."""
        if final:
            return {"split": "test", "limit": settings.final_limit}
        return {"split": "val", "limit": settings.ood_limit if self.out_of_domain else settings.limit}

    def load_scorer(self):
        """A function (images, records, images per prompt) -> one result per record."""
        raise NotImplementedError

    def summary(self, records: list[dict], per_prompt: list) -> dict:
        """The JSON-ready scores of these records from their per-record results."""
        raise NotImplementedError

    def metrics(self, result: dict) -> list[Metric]:
        """The result's headline numbers, described for tables (keys unique within a run)."""
        raise NotImplementedError

    # --- shared by every benchmark ----------------------------------------------------------
    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = self.load_scorer()
        return self._scorer

    def evaluate(self, model: FlowModel, *, prompts: str | Path | None = None, limit: int | None = None,
                 images_per_prompt: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, progress: bool = False,
                 split: str = "test", **_) -> dict:
        """This benchmark's scores for `model` as a JSON-ready dict (keyword options other
        benchmarks take, such as the toy's `ood_limit`, are ignored)."""
        t0 = time.perf_counter()
        n = images_per_prompt or self.images_per_prompt
        records = subset(self.prompts(prompts, split), limit)
        scorer = self.scorer
        note = None
        if model.unknown_words([r["prompt"] for r in records]):  # a closed vocabulary (the toy's)
            model.skip_unknown_words()
            note = "the model reads only the words it knows: this checks the plumbing, not a score"
        per_prompt: list = []
        own = dist.share(len(records), CHUNK)  # all of them in one process
        for lo in tqdm(range(own.start, own.stop, CHUNK), desc=self.name,
                       disable=not progress or not dist.is_main()):
            chunk = records[lo:lo + CHUNK]
            images = seeded_images(model, chunk, lo, n, steps=steps, guidance=guidance, seed=seed)
            per_prompt += scorer(images, chunk, n)
        per_prompt = dist.concat(per_prompt)
        out = {"benchmark": self.name, "split": split, "model": model.name,
               "steps": steps or model.default_steps,
               "guidance": model.default_guidance if guidance is None else guidance, "seed": seed,
               "images_per_prompt": n, **self.summary(records, per_prompt), "scorer": dict(self.settings)}
        if note:
            out["note"] = note
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out


def seeded_images(model: FlowModel, records: list[dict], first: int, n: int, *, steps, guidance,
                  seed) -> torch.Tensor:
    """`n` images of each record, the noise of image k of prompt i seeded by (seed, i, k)."""
    seeds = [seed * 1_000_003 + (first + i) * n + k for i in range(len(records)) for k in range(n)]
    noise = torch.cat([model.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])
    prompts = [r["prompt"] for r in records for _ in range(n)]
    return model.generate(prompts, steps=steps, guidance=guidance, noise=noise)


def per_record(values: list, n: int) -> list[list]:
    """A flat list of values, n images per record, as one list per record."""
    return [values[i:i + n] for i in range(0, len(values), n)]


def build_benchmark(name: str, device: str = "cpu", **options) -> Benchmark:
    return BENCHMARKS.get(name)(device, **options)


def load_text_prompts(path: str | Path) -> list[dict]:
    """Plain prompts: a .jsonl file with a "prompt" per line, or a text file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} not found")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not (isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and rec["prompt"].strip()):
                raise PromptFileError(f"{path}:{i}: expected an object with a non-empty 'prompt'")
        else:
            rec = {"prompt": line.strip()}
        records.append(rec)
    if not records:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return records
