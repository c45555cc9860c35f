"""What a policy is measured on inside `bench run`: the preset's benchmarks, and the exact KL
to the pretrained model along the method's own sampler (docs/methods.md §7). Every method,
seed and epoch is evaluated on the same prompts and the same noise (`EVAL_SEED`).

Under torchrun every rank calls the same evaluation: each scores a contiguous share of the
prompts (the benchmarks' and the KL's, in the blocks one process computes), the per-prompt
results are gathered, and every rank summarises all of them exactly as one process would;
rank 0 writes (harness/run/cell.py). The sample grids are rank 0's alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from flowarena.core.fields import check_fields
from flowarena.core.io import write_json
from flowarena.core.results import EvalRecord
from flowarena.harness.benchmarks import BENCHMARKS, Benchmark
from flowarena.harness.benchmarks.base import CHUNK
from flowarena.harness.run.config import EvalSettings, RunError
from flowarena.methods import Method, dist
from flowarena.methods.memory import memory_phase
from flowarena.methods.trainer import TrainConfig
from flowarena.models.base import FlowModel
from flowarena.reports.grid import save_grid
from flowarena.tasks.prompts import subset
from flowarena.tasks.soft_tifa import stderr

EVAL_SEED = 1234  # the evaluation noise: the same for every method, seed and epoch


class Evaluation:
    """The preset's benchmarks, built once per run (a judge or PickScore loads once), and
    the prompts of the first one's val split, which also draw the sample grids and measure
    the KL. Between epochs every benchmark scores its val prompts; at the end, those with a
    test set of their own (geneval2's official 800, parti-test) score it afresh (`final`)."""

    def __init__(self, settings: EvalSettings, device: str = "cpu", options: dict | None = None):
        """`device`: where the scorers (judge, PickScore) run; a run's rewards use it too
        (`bench run --reward-device`), so they may sit on a GPU of their own."""
        self.settings, self.device = settings, device
        check_fields(settings, RunError, "eval.")  # settings built in Python meet the files' contract
        options = options or {}
        self.benchmarks: list[Benchmark] = []
        for name in settings.benchmarks:
            bench_cls = BENCHMARKS.get(name)
            taken = {k: v for k, v in options.items() if k in bench_cls.options}
            self.benchmarks.append(bench_cls(device, **taken))
        for bench in self.benchmarks:  # a missing or malformed prompt file fails before any training
            for final in (False, True):
                bench.run_prompts(settings, final)
        self._records: list[dict] | None = None

    @property
    def options(self) -> set[str]:
        """The scorer options (`judge`, `pickscore`, ...) the benchmarks take."""
        return {o for b in self.benchmarks for o in b.options}

    @property
    def records(self) -> list[dict]:
        if self._records is None:
            self._records = self.benchmarks[0].run_prompts(self.settings)
        return self._records

    @property
    def has_test_sets(self) -> bool:
        return any(b.test_set for b in self.benchmarks)

    def _score(self, model: FlowModel, benchmarks: list[Benchmark], final: bool) -> dict[str, dict]:
        ev = self.settings
        with memory_phase("evaluation"), model.precision_of(ev.precision):
            # recorded, so that a report can tell cells scored in different precisions apart
            computed = str(model.compute_dtype).removeprefix("torch.")
            return {b.name: {**b.evaluate(model, steps=ev.steps, guidance=ev.guidance, seed=EVAL_SEED,
                                          **b.run_options(ev, final)), "precision": computed}
                    for b in benchmarks}

    def _record(self, results: dict[str, dict], kl_ref: dict) -> EvalRecord:
        metrics = [m for b in self.benchmarks for m in b.metrics(results[b.name])]
        keys = [m.key for m in metrics]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise RunError(f"two of the benchmarks {', '.join(self.settings.benchmarks)} report a "
                           f"metric {dup!r}")
        return EvalRecord(metrics, {b.name: results[b.name] for b in self.benchmarks}, kl_ref)

    def __call__(self, model: FlowModel, method: Method | None, train: TrainConfig) -> EvalRecord:
        """Every benchmark on its val prompts, and the KL to the pretrained model along the
        method's sampler (0 for the pretrained model itself: `method=None`)."""
        ev = self.settings
        results = self._score(model, self.benchmarks, final=False)
        if method is not None:
            sampler, eta = method.kl_sampler
            with memory_phase("evaluation"):
                kl_ref = kl_to_pretrained(model, subset(self.records, ev.kl_prompts), sampler=sampler,
                                          eta=eta, steps=train.steps, guidance=train.guidance, seed=EVAL_SEED)
        else:
            kl_ref = {"mean": 0.0, "stderr": 0.0, "per_step": [0.0] * train.steps, "n": 0,
                      "unit": "per-element KL summed over steps"}
        return self._record(results, kl_ref)

    def final(self, model: FlowModel, last: EvalRecord) -> EvalRecord:
        """The final scores: benchmarks with a test set score it (`final_limit` prompts), the
        others and the KL keep `last`, the evaluation after the last epoch. Without any test
        set, `last` itself."""
        if not self.has_test_sets:
            return last
        results = dict(last.benchmarks)
        results.update(self._score(model, [b for b in self.benchmarks if b.test_set], final=True))
        return replace(self._record(results, last.kl_to_pretrained), epoch=last.epoch,
                       wall_seconds=last.wall_seconds)

    def sample_grid(self, model: FlowModel, png: Path) -> None:
        """The first prompts of the sample grids, drawn from the evaluation noise, with the prompts
        beside them (prompts.json) so the report can label the columns."""
        prompts = [r["prompt"] for r in subset(self.records, self.settings.samples)]
        noise = model.initial_noise(len(prompts), torch.Generator().manual_seed(EVAL_SEED))
        ev = self.settings
        imgs = model.generate(prompts, steps=ev.steps, guidance=ev.guidance, noise=noise)
        save_grid(imgs, png, nrow=len(prompts))
        write_json(png.parent / "prompts.json", prompts)


@torch.no_grad()
def kl_to_pretrained(model: FlowModel, records: list[dict], *, sampler: str = "sde", eta: float = 0.7,
                     steps: int = 10, guidance: float = 1.0, seed: int = 0) -> dict:
    """docs/methods.md §7: sample with the policy's stochastic sampler and sum the exact per-step
    KL(π_θ(·|x_k) ‖ π_ref(·|x_k)) over the trajectory — the KL between the two chains' path
    distributions. Per element (mean over dims) per step, summed over steps; also the
    per-step profile. Deterministic steps (CPS's last) contribute nothing and are skipped.

    In blocks of `CHUNK` prompts, which the ranks share out under torchrun; every noise is
    drawn for the whole list and sliced, so a prompt's KL does not depend on the ranks."""
    from flowarena.methods.sde import SAMPLERS, gaussian_kl

    step_fn = SAMPLERS[sampler]
    gen = torch.Generator().manual_seed(seed)
    prompts = [r["prompt"] for r in records]
    x0 = model.initial_noise(len(prompts), gen)
    own = dist.share(len(prompts), CHUNK)
    blocks = [slice(lo, min(lo + CHUNK, own.stop)) for lo in range(own.start, own.stop, CHUNK)]
    xs = [x0[b] for b in blocks]
    embeds = [model.embed(prompts[b], guidance) for b in blocks]
    sig = model.sigmas(steps)
    mine = []  # per step, this rank's per-prompt KL (0 on a deterministic step)
    for k in range(steps):
        noise = torch.randn(x0.shape, generator=gen)
        kls = []
        for i, (b, x) in enumerate(zip(blocks, xs)):
            s = torch.full((len(x),), float(sig[k]), device=x.device)
            v = model.velocity(x, s, embeds[i], guidance)
            with model.reference():
                v_ref = model.velocity(x, s, embeds[i], guidance)
            r = step_fn(x, v, float(sig[k]), float(sig[k + 1]), eta=eta, noise=noise[b].to(x.device))
            if bool((r.std > 0).all()):
                ref = step_fn(x, v_ref, float(sig[k]), float(sig[k + 1]), eta=eta, next_sample=r.next_sample)
                kls.append(gaussian_kl(r.mean, ref.mean, r.std).float().cpu())
            else:
                kls.append(torch.zeros(len(x)))
            xs[i] = r.next_sample
        mine.append(torch.cat(kls) if kls else torch.zeros(0))
    rows = dist.concat(torch.stack(mine, 1).tolist())  # every prompt's per-step KL, in order
    per_step, total = [], torch.zeros(len(prompts))
    for k in range(steps):
        kl = torch.tensor([row[k] for row in rows])  # float32, as computed
        total += kl  # summed step by step, as over one batch
        per_step.append(float(kl.mean()))
    return {"mean": float(total.mean()), "stderr": stderr(total.numpy()), "per_step": per_step,
            "n": len(prompts), "unit": "per-element KL summed over steps", "per_prompt": total.tolist()}
