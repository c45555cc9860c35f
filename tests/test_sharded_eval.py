"""Evaluation sharded over ranks (gloo on the CPU): two processes, each scoring its share of
the prompts, give exactly the numbers of one process, every per-prompt value in its place."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from flowarena.core.results import Metric
from flowarena.harness.benchmarks import BENCHMARKS, Benchmark, register_benchmark
from flowarena.harness.run.config import EvalSettings, load_preset, method_variant
from flowarena.harness.run.evaluation import EVAL_SEED, Evaluation, kl_to_pretrained
from flowarena.methods import build_method, dist
from flowarena.methods.trainer import TrainConfig
from flowarena.tasks.prompts import load_toy_split, subset
from flowarena.tasks.soft_tifa import stderr

REPO = Path(__file__).resolve().parents[1]
# shares that split unevenly and end in short blocks: the toy's 96 eval and 80 ood prompts are
# 64 + 32 and 64 + 16 images (whole generate batches); the generic benchmark's 96 and, at the
# end, 40 prompts are 3 + 3 and 1 + 2 chunks of 16; the KL's 40 prompts 1 + 2 blocks of 16
SETTINGS = EvalSettings(benchmarks=("toy", "test-shards"), limit=96, ood_limit=80, final_limit=40,
                        kl_prompts=40, steps=3, samples=2)
TRAIN = TrainConfig(steps=3, sde_window=2)


class Brightness(Benchmark):
    """A benchmark on the generic path (`Benchmark.evaluate`): two images per prompt, each
    scored by its mean brightness, and a test set of its own."""
    images_per_prompt = 2

    def prompts(self, path=None, split="test"):
        return load_toy_split("eval")

    def load_scorer(self):
        return lambda images, records, n: [[float(images[i * n + k].mean()) for k in range(n)]
                                           for i in range(len(records))]

    def summary(self, records, per_prompt):
        values = [float(np.mean(p)) for p in per_prompt]
        return {"brightness": {"mean": float(np.mean(values)), "stderr": stderr(values),
                               "per_prompt": values, "per_image": per_prompt}}

    def metrics(self, result):
        b = result["brightness"]
        return [Metric("brightness", "Brightness", b["mean"], b["stderr"], len(b["per_prompt"]),
                       benchmark=self.name)]


def _no_seconds(d):
    if isinstance(d, dict):
        return {k: _no_seconds(v) for k, v in d.items() if k != "seconds"}
    return d


def evaluate(model_path: str) -> dict:
    """The tiny toy model with a fixed random LoRA: the evaluation between epochs, the final one,
    a KL along CPS (whose last step is deterministic), and how many images and velocity rows
    this rank computed."""
    from flowarena.models.toy import load_toy

    register_benchmark("test-shards")(Brightness)
    try:
        model = load_toy(model_path)
        model.setup_training(4, 8, None)
        gen = torch.Generator().manual_seed(5)
        model.load_trainable_state_dict({k: 0.05 * torch.randn(v.shape, generator=gen)
                                         for k, v in model.trainable_state_dict().items()})
        rows = {"images": 0, "velocity": 0}
        generate, velocity = model.generate, model.velocity

        def counted_generate(prompts, **kw):
            rows["images"] += len(prompts)
            return generate(prompts, **kw)

        def counted_velocity(x, *args, **kw):
            rows["velocity"] += len(x)
            return velocity(x, *args, **kw)
        model.generate, model.velocity = counted_generate, counted_velocity
        evaluation = Evaluation(SETTINGS)
        ev = evaluation(model, build_method("dppo"), TRAIN)
        final = evaluation.final(model, ev)
        cps = kl_to_pretrained(model, subset(evaluation.records, 20), sampler="cps", eta=0.7, steps=3,
                               seed=EVAL_SEED)
    finally:
        BENCHMARKS.remove("test-shards")
    return {"eval": _no_seconds(ev.to_json()), "final": _no_seconds(final.to_json()),
            "cps": cps, "rows": rows}


def _rank(rank: int, world: int, port: int, model_path: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init("cpu")
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(evaluate(model_path)))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_score_what_one_process_scores(tiny_path, tmp_path):
    mp.spawn(_rank, args=(2, _free_port(), tiny_path, str(tmp_path)), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = evaluate(tiny_path)
    finally:
        torch.set_num_threads(threads)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    one = json.loads(json.dumps(one))  # as written: tuples become lists
    for two in ranks:  # every rank holds every prompt's result
        for key in ("eval", "final", "cps"):
            assert two[key] == one[key], key
    toy, kl = one["eval"]["benchmarks"]["toy"], one["eval"]["kl_to_pretrained"]
    assert toy["soft_tifa"]["n_prompts"] == 96 and toy["preference_ood"]["n"] == 80
    assert len(one["eval"]["benchmarks"]["test-shards"]["brightness"]["per_image"]) == 96
    assert len(one["final"]["benchmarks"]["test-shards"]["brightness"]["per_image"]) == 40
    assert kl["n"] == 40 and len(kl["per_step"]) == 3 and kl["mean"] > 0
    assert one["cps"]["per_step"][-1] == 0.0 and one["cps"]["mean"] > 0
    # the work was split, not repeated: the ranks' images and velocity rows add up to one process's
    for what in ("images", "velocity"):
        mine = [r["rows"][what] for r in ranks]
        assert sum(mine) == one["rows"][what] and 0 < min(mine), (what, mine)
    assert ranks[0]["rows"]["images"] == 64 + 64 + 96 + 32  # toy eval, ood, generic, final: its shares


def test_bench_run_nproc_2_evaluates_in_shards(tiny_path, tmp_path):
    """The whole run under torchrun: the base model and the trained cell, each evaluated by two
    ranks, hold the scores one process computes for the same weights."""
    from flowarena.harness.run.export import load_cell_policy
    from flowarena.models.toy import load_toy

    config = tmp_path / "sharded.toml"
    # toy-colour and lr 1e-2: rewards that spread on the random tiny model, so that it moves off the base
    config.write_text('description = "sharded evaluation"\nepochs = 1\nreward = "toy-colour"\n\n'
                      '[train]\nprompts_per_epoch = 2\nlr = 1e-2\n'
                      'group_size = 4\nminibatch_size = 8\nsteps = 4\nsde_window = 2\n\n[eval]\nevery = 1\n'
                      'limit = 96\nood_limit = 80\nsteps = 3\nkl_prompts = 40\nsamples = 2\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["run", "--config", str(config), "--methods", "grpo", "--seeds", "1", "--model-path", tiny_path,
            "--nproc", "2", "--out", str(tmp_path / "two")]
    r = subprocess.run([sys.executable, "-m", "flowarena.harness", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "two" / "toy"
    preset = load_preset(config)
    method, train = method_variant("grpo", preset)  # the KL's sampler and steps, as in the run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation = Evaluation(preset.eval)
        base = evaluation(load_toy(tiny_path), None, train).to_json()
        policy, _ = load_cell_policy(run / "grpo" / "seed0")
        trained = evaluation(policy, method, train).to_json()
    finally:
        torch.set_num_threads(threads)
    files = {"base": run / "base" / "seed0" / "eval.json",
             "trained": run / "grpo" / "seed0" / "eval" / "1.json"}
    for name, one in (("base", base), ("trained", trained)):
        two = json.loads(files[name].read_text())
        assert _no_seconds(two["benchmarks"]) == _no_seconds(one["benchmarks"]), name
        assert two["kl_to_pretrained"] == one["kl_to_pretrained"], name
    assert trained["kl_to_pretrained"]["mean"] > 0
    assert trained["benchmarks"]["toy"]["soft_tifa"]["n_prompts"] == 96
