"""`bench`: the FlowArena command line.

Every user mistake (unknown model, empty prompt, a word the toy model does not know,
missing or corrupt weights, malformed prompt files) ends in one line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flowarena.core.fields import Count, Images, NonNegative, Steps, Whole
from flowarena.core.io import check_output
from flowarena.core.rundir import RunDir
from flowarena.harness import catalog
from flowarena.harness.benchmarks.base import EvalRequest
from flowarena.harness.launch import launch, reports_here
from flowarena.harness.oneline import BadInput, OneLineUsage, friendly
from flowarena.harness.options import (
    SCORERS,
    DeviceOpt,
    GuidanceOpt,
    ModelOpt,
    PathOpt,
    ReferenceOpt,
    ResolutionOpt,
    StepsOpt,
    check_values,
    overrides,
    scorers,
    settings,
    settings_of,
    with_scorers,
)
from flowarena.harness.run.config import PRESETS, EvalSettings, Preset
from flowarena.methods.trainer import TrainConfig
from flowarena.models import MODELS

app = typer.Typer(
    cls=OneLineUsage,
    help="FlowArena: benchmark RL fine-tuners for flow-matching text-to-image models.\n\n"
         "Start with `bench eval` (the shipped toy model on the toy benchmark) and "
         "`bench sample --prompt 'two red circles left of a blue square'`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings reflow to the terminal instead of keeping source line breaks
)

REQUEST = settings_of(EvalRequest, None, panel="Evaluation")
RECIPE = settings_of(Preset, "", skip=("name", "description", "model", "methods", "seeds", "train", "eval",
                                       "reward_options", "method_overrides"))
TRAIN = settings_of(TrainConfig, "train")
EVAL = settings_of(EvalSettings, "eval")


def _load(model: str, model_path: str | None, device: str = "cpu", resolution: int | None = None):
    from flowarena.models import load_model

    return load_model(model, model_path, device, **({} if resolution is None else {"resolution": resolution}))


@app.command()
@friendly
def sample(
    prompt: str = typer.Option(..., "--prompt", "-p",
                               help="Text prompt, e.g. 'two red circles left of a blue square'."),
    model: str = ModelOpt,
    model_path: str = PathOpt,
    n: int = typer.Option(8, "--n", "-n", help="Number of images (different initial noise)."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    steps: int = StepsOpt,
    guidance: float = GuidanceOpt,
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="PNG grid to write."),
    device: str = DeviceOpt,
    resolution: int = ResolutionOpt,
):
    """Sample images for one prompt with the ODE sampler and write a PNG grid."""
    from flowarena.reports.grid import save_grid

    if not prompt.strip():
        raise BadInput("the prompt is empty")
    check_values(n=(n, Images), seed=(seed, Whole), steps=(steps, Steps),
             guidance=(guidance, NonNegative), resolution=(resolution, Count))
    check_output(out, [model_path])
    m = _load(model, model_path, device, resolution)
    m.encode_prompts([prompt])  # vocabulary check before any sampling
    images = m.generate([prompt] * n, steps=steps, guidance=guidance, seed=seed)
    save_grid(images, out, nrow=min(n, 8))
    typer.echo(f"wrote {n} images for {prompt!r} to {out}")


@app.command("eval")
@friendly
@settings(REQUEST)
@with_scorers
def eval_(
    model: str = typer.Option(None, "--model", "-m", help="Model to use (toy: the embedded 32x32 model; "
                                                         "default: toy, or the --run cell's)."),
    model_path: str = PathOpt,
    run: Path = typer.Option(None, "--run", help="Score a fine-tuned policy: a cell of a run, e.g. "
                                                 "runs/sd35-geneval2/sd35/dppo/seed0 (its model, "
                                                 "weights, and its run's steps and guidance)."),
    lora: Path = typer.Option(None, "--lora", help="Score an exported LoRA (`bench export`'s "
                                                   "directory) on --model / --model-path."),
    benchmark: str = typer.Option("toy", "--benchmark", "-b",
                                  help="toy (the toy judge, no downloads), geneval2 (VQA judge), geneval "
                                       "(detector + CLIP), pickscore. `bench benchmarks` describes them."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full result (per prompt) as JSON."),
    device: str = DeviceOpt,
    resolution: int = ResolutionOpt,
    **given,
):
    """Evaluate a model on a benchmark. toy: Soft-TIFA (GM, AM, per skill, per atom count) on
    the held-out eval split and the preference score on the ood split; geneval2: Soft-TIFA,
    TIFA and VQAScore under a VQA judge; geneval: accuracy per tag; pickscore: mean score.
    A fine-tuned policy: --run CELL_DIR (a run's cell) or --lora DIR (an exported LoRA)."""
    from dataclasses import asdict, replace

    from flowarena.core.io import write_json
    from flowarena.harness.benchmarks import build_benchmark
    from flowarena.models import check_device
    from flowarena.reports.tables import eval_table

    request = EvalRequest(**overrides(given, REQUEST, error=BadInput))
    bench = build_benchmark(benchmark, device, **{k: given.get(k) for k in SCORERS})
    check_device(device)
    check_values(resolution=(resolution, Count))
    if run is not None and (lora is not None or model_path is not None):
        raise BadInput("--run scores a run's cell with the model it trained: leave out --lora and "
                       "--model-path")
    if json_out is not None:
        check_output(json_out, [run, lora, model_path, request.prompts])
    if run is not None:
        from flowarena.harness.run import load_cell_policy

        m, config = load_cell_policy(run, device, resolution)
        if model is not None and model != config["model"]:
            raise BadInput(f"{run} is a cell of the {config['model']} model, not {model}")
        request = replace(request, **{k: config["eval"].get(k) for k in ("steps", "guidance")
                                      if getattr(request, k) is None})
    else:
        m = _load(model or "toy", model_path, device, resolution)
        if lora is not None:
            m.load_lora(lora)
    result = bench.evaluate(m, **asdict(request), progress=True)
    metrics = bench.metrics(result)
    typer.echo(eval_table(result, metrics))
    if json_out:
        write_json(json_out, {**result, "metrics": [asdict(x) for x in metrics]})
        typer.echo(f"wrote {json_out}")


@app.command()
@friendly
def pretrain(
    what: str = typer.Argument(..., help="toy (the generator) or toy-pick (the preference model)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default: pretrain/<what>)."),
    steps: int = typer.Option(None, help="Optimizer steps (default: the shipped recipe)."),
    seed: int = typer.Option(0, help="Seed (the shipped weights used 0)."),
):
    """Train the toy generator or the toy preference model from scratch (seeded,
    resumable). The shipped weights came from these commands with default options."""
    from dataclasses import replace

    check_values(steps=(steps, Count), seed=(seed, Whole))
    out = out or Path("pretrain") / what
    if what == "toy":
        from flowarena.models.toy_pretrain import PretrainConfig, pretrain_toy

        cfg = PretrainConfig(seed=seed)
        cfg = replace(cfg, steps=steps) if steps is not None else cfg
        try:
            path = pretrain_toy(out, cfg)
        except ValueError as e:
            raise BadInput(str(e)) from None
    elif what == "toy-pick":
        from flowarena.rewards.toy_pick import ToyPickTrainConfig, pretrain_toy_pick

        cfg = ToyPickTrainConfig(seed=seed)
        cfg = replace(cfg, steps=steps) if steps is not None else cfg
        path = pretrain_toy_pick(out, cfg)
    else:
        raise BadInput(f"unknown pretraining target {what!r} (choose toy or toy-pick)")
    typer.echo(f"wrote {path}; use it with --model-path {path}")


@app.command("judge-check")
@friendly
def judge_check(
    split: str = typer.Option("eval", help="Prompt split whose scenes are rendered."),
    layouts: int = typer.Option(5, help="Random layouts per prompt."),
    seed: int = typer.Option(0),
):
    """Measure the toy judge on clean renders: per skill, how often it gives the
    expected answer (> 0.5) and rejects a falsified one (< 0.5)."""
    from flowarena.reports.tables import judge_table
    from flowarena.tasks.prompts import load_toy_split
    from flowarena.tasks.toyworld.grammar import parse_prompt
    from flowarena.tasks.toyworld.judge_check import judge_accuracy

    check_values(layouts=(layouts, Count), seed=(seed, Whole))
    specs = [parse_prompt(r["prompt"]) for r in load_toy_split(split)]
    typer.echo(judge_table(judge_accuracy(specs, layouts=layouts, seed=seed)))


# `bench run`'s recipe settings: each field of the preset, its [train] and its [eval] table is
# an option, generated from the dataclasses (harness/options.py); the command declares the rest


@app.command()
@friendly
@settings(RECIPE, TRAIN, EVAL)
@with_scorers
def run(
    methods: str = typer.Option(None, "--methods",
                                help="Comma-separated methods (`bench methods`), each optionally with "
                                     "settings: dppo@delta=1e-6@beta=0.04. Default: the preset's."),
    model: str = typer.Option(None, "--model", "-m", help=f"One of {', '.join(MODELS.names())} "
                                                          "(`bench models`). Default: the preset's."),
    model_path: str = PathOpt,
    preset: str = typer.Option(None, help=f"The recipe: {', '.join(PRESETS.names())} (`bench presets`). "
                                          "Default: the model's own (toy: default)."),
    config: Path = typer.Option(None, "--config", help="Your own recipe: a preset TOML file (may name a "
                                                       "shipped preset as `base`; `--dump-config` writes "
                                                       "one to start from)."),
    dump_config: bool = typer.Option(False, "--dump-config", help="Print the resolved recipe as TOML; exit."),
    seeds: int = typer.Option(None, help="Seeds per method (default: the preset's; a rerun adds seeds)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/PRESET)."),
    device: str = DeviceOpt,
    reward_device: str = typer.Option(None, "--reward-device",
                                      help="Memory knob: where the rewards and the benchmarks' scorers "
                                           "(judge, PickScore) run, e.g. cuda:1 (default: --device)."),
    reference: str = ReferenceOpt,
    log_to: str = typer.Option(None, "--log-to", help="Also stream the metrics live to 'tensorboard' "
                                                      "(<out>/tensorboard) or 'wandb' (offline without an "
                                                      "account); optional extras."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (one per GPU with --device "
                                                 "cuda): relaunches this command under torchrun. Or "
                                                 "launch it yourself with torchrun / accelerate launch."),
    shard: str = typer.Option(None, "--shard", help="Run every N-th cell from the I-th (I/N, e.g. 1/4): N "
                                                    "processes or machines sharing --out run one experiment "
                                                    "(a Slurm array); `bench report` merges their results."),
    jobs: int = typer.Option(None, "--jobs", help="Cells at once here: N one-thread shards (same results)."),
    **given,
):
    """Train every method on the same model, prompts, noise and budget; evaluate each on the
    preset's benchmarks (toy: Soft-TIFA in-domain, the ood preference score; real recipes:
    GenEval2 between epochs and at the end, PickScore out of domain) and the KL to the
    pretrained model; print the comparison table. Every preset setting is an option below:
    --epochs, --lr, --group-size, --eval-limit, ... (`--dump-config` shows them all). Rerunning
    the same command resumes where it stopped."""
    from dataclasses import replace

    from flowarena.harness.run import plan, to_toml
    from flowarena.harness.run.config import split_methods

    check_values(seeds=(seeds, Count), nproc=(nproc, Count), jobs=(jobs, Count))
    names = None if methods is None else split_methods(methods)
    if names == []:
        raise BadInput("--methods is empty: name at least one method (bench methods lists them)")
    if config is not None and preset is not None:
        raise BadInput("give --preset or --config, not both (a config file can name a preset as its base)")
    spec = plan(out or (Path("runs") / config.stem if config is not None else None), names, model,
                config or preset, seeds, model_path, device=device, reward_device=reward_device,
                log_to=log_to, reference=reference, reward_options=scorers(given),
                **overrides(given, RECIPE, TRAIN, EVAL, error=BadInput))
    if dump_config:
        typer.echo(to_toml(replace(spec.preset, methods=tuple(spec.methods), seeds=spec.seeds)), nl=False)
        return
    launch(spec, shard=shard, jobs=jobs, nproc=nproc)
    if reports_here():
        from flowarena.reports.summary import run_summary

        typer.echo(run_summary(spec.out, spec.reference))


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="A run directory written by `bench run`."),
           reference: str = ReferenceOpt):
    """Comparison tables (Markdown, CSV), learning curves, the reward–KL frontier, the ratio
    diagnostics and sample grids, in one self-contained report/index.html. Reads result files
    only; missing or half-written ones are listed and skipped."""
    from flowarena.reports.report import build_report

    if not RunDir(run_dir).manifest.is_file():
        raise BadInput(f"{run_dir} is not a run directory (no manifest.json)")
    if reference is not None:
        from flowarena.core.results import read_json

        ran = read_json(RunDir(run_dir).manifest).get("config", {}).get("methods", [])
        if reference not in ran:
            raise BadInput(f"--reference {reference} is not among the run's methods ({', '.join(ran)})")
    res = build_report(run_dir, reference)
    for m in res["missing"]:
        typer.echo(f"missing: {m}")
    typer.echo(f"{len(res['figures'])} figures; open {res['index']}")


@app.command()
@friendly
def export(
    cell: Path = typer.Argument(..., help="A method x seed directory of a run, e.g. "
                                          "runs/default/toy/grpo/seed0."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write: a directory (the toy model "
                                                      "also takes a .safetensors file name)."),
):
    """Write a fine-tuned policy where you use it without FlowArena. sd35 / flux1-dev /
    flux2-klein: the LoRA as OUT/pytorch_lora_weights.safetensors, which a plain diffusers
    pipeline takes with `pipe.load_lora_weights(OUT)`. toy: the weights with the LoRA merged,
    for `bench sample --model toy --model-path OUT/toy.safetensors`."""
    from flowarena.harness.run import export_cell

    check_output(out, [cell], file=out.suffix == ".safetensors")  # never over the cell's own checkpoint
    path, config = export_cell(cell, out)
    typer.echo(f"wrote {path} ({config['model']}, {config['method']}, seed {config['seed']})")


for _command in (catalog.benchmarks, catalog.rewards, catalog.methods_, catalog.presets, catalog.models):
    app.command(_command.__name__.rstrip("_"))(_command)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
