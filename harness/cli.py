"""`bench`: the FlowArena command line.

Every user mistake (unknown model, empty prompt, a word the toy model does not know,
missing or corrupt weights, malformed prompt files) ends in one line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from flowarena.core.fields import Count, Limit, NonNegative, Range, Steps, Whole, coerce
from flowarena.core.io import check_output
from flowarena.core.rundir import RunDir
from flowarena.harness.launch import JOB, parse_shard, relaunch, run_jobs
from flowarena.harness.oneline import BadInput, OneLineUsage, friendly
from flowarena.harness.options import overrides, settings, settings_of
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


ModelOpt = typer.Option("toy", "--model", "-m", help="Model to use (toy: the embedded 32x32 model).")
PathOpt = typer.Option(None, "--model-path", help="Weights file or directory (default: shipped).")
StepsOpt = typer.Option(None, "--steps", help="ODE sampling steps (default: the model's, 20 for toy).")
GuidanceOpt = typer.Option(None, "--guidance", "-g",
                           help="Classifier-free guidance scale (1.0 = no CFG; toy default 4.5).")


ResolutionOpt = typer.Option(None, "--resolution",
                             help="Image side in pixels for sd35/FLUX (default: the pipeline's, "
                                  "1024 for the released models; the Flow-GRPO recipes train at 512).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (the toy model is made for cpu).")


def _options(**given) -> None:
    """Command-line values that are no preset field, checked by the same contract (the name,
    the value and what is allowed, in one line): `name=(value, type)`."""
    for name, (value, hint) in given.items():
        if value is not None:  # None: not given
            coerce(value, hint, f"--{name.replace('_', '-')}", BadInput)


Images = Annotated[int, Range(1, 4096)]  # a grid's, or a prompt's: more is a typo (and out of memory)


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
    _options(n=(n, Images), seed=(seed, Whole), steps=(steps, Steps),
             guidance=(guidance, NonNegative), resolution=(resolution, Count))
    check_output(out, [model_path])
    m = _load(model, model_path, device, resolution)
    m.encode_prompts([prompt])  # vocabulary check before any sampling
    images = m.generate([prompt] * n, steps=steps, guidance=guidance, seed=seed)
    save_grid(images, out, nrow=min(n, 8))
    typer.echo(f"wrote {n} images for {prompt!r} to {out}")


JudgeOpt = typer.Option(None, "--judge", help="VQA judge of geneval2 / vqascore: a hub id or a directory "
                                             "(default Qwen/Qwen3-VL-8B-Instruct).")
ReferenceOpt = typer.Option(None, "--reference",
                            help="The method every other is compared with, paired over seeds and prompts "
                                 "with 95 % intervals (default: grpo where it runs).")
JudgeUrlOpt = typer.Option(None, "--judge-url",
                           help="Ask the --judge served at this OpenAI-compatible endpoint (vLLM, sglang; "
                                "e.g. http://HOST:8000/v1) instead of loading it here.")
DetectorOpt = typer.Option(None, "--detector",
                           help="GenEval's detector, a COCO-instance Mask2Former id or directory "
                                "(default facebook/mask2former-swin-small-coco-instance), or GenEval's "
                                "own through mmdet: mmdet:CONFIG:CHECKPOINT.")
ClipOpt = typer.Option(None, "--clip", help="GenEval's colour model, a CLIP id or directory "
                                            "(default openai/clip-vit-large-patch14), or through "
                                            "open_clip: open_clip:ViT-L-14:openai.")
PickOpt = typer.Option(None, "--pickscore", help="PickScore model id or directory (default "
                                                 "yuvalkirstain/PickScore_v1).")
PickProcOpt = typer.Option(None, "--pickscore-processor",
                           help="Its processor (default: the --pickscore directory if given, else "
                                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K).")


@app.command("eval")
@friendly
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
    prompts: Path = typer.Option(None, "--prompts", help="Prompt file instead of the benchmark's own "
                                                         "(geneval2 / geneval format, or one prompt per "
                                                         "line for pickscore)."),
    steps: int = StepsOpt,
    guidance: float = GuidanceOpt,
    seed: int = typer.Option(0, help="Seed of the initial noise (same seed, same noise for every model)."),
    images_per_prompt: int = typer.Option(None, help="Images per prompt (default: the benchmark's; "
                                                     "GenEval uses 4, GenEval2 1)."),
    ood: bool = typer.Option(True, help="toy: also score the ood split with the toy preference model."),
    limit: int = typer.Option(None, help="Only N prompts, spread evenly over the set (a quick look)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the full result (per prompt) as JSON."),
    device: str = DeviceOpt,
    resolution: int = ResolutionOpt,
    judge: str = JudgeOpt,
    judge_url: str = JudgeUrlOpt,
    detector: str = DetectorOpt,
    clip: str = ClipOpt,
    pickscore: str = PickOpt,
    pickscore_processor: str = PickProcOpt,
):
    """Evaluate a model on a benchmark. toy: Soft-TIFA (GM, AM, per skill, per atom count) on
    the held-out eval split and the preference score on the ood split; geneval2: Soft-TIFA,
    TIFA and VQAScore under a VQA judge; geneval: accuracy per tag; pickscore: mean score.
    A fine-tuned policy: --run CELL_DIR (a run's cell) or --lora DIR (an exported LoRA)."""
    from dataclasses import asdict

    from flowarena.core.io import write_json
    from flowarena.harness.benchmarks import build_benchmark
    from flowarena.models import check_device
    from flowarena.reports.tables import eval_table

    bench = build_benchmark(benchmark, device, judge=judge, judge_url=judge_url, detector=detector,
                            clip=clip, pickscore=pickscore, pickscore_processor=pickscore_processor)
    check_device(device)
    _options(images_per_prompt=(images_per_prompt, Images), seed=(seed, Whole), steps=(steps, Steps),
             guidance=(guidance, NonNegative), limit=(limit, Limit), resolution=(resolution, Count))
    if run is not None and (lora is not None or model_path is not None):
        raise BadInput("--run scores a run's cell with the model it trained: leave out --lora and "
                       "--model-path")
    if json_out is not None:
        check_output(json_out, [run, lora, model_path, prompts])
    if run is not None:
        from flowarena.harness.run import load_cell_policy

        m, config = load_cell_policy(run, device, resolution)
        if model is not None and model != config["model"]:
            raise BadInput(f"{run} is a cell of the {config['model']} model, not {model}")
        steps = config["eval"].get("steps") if steps is None else steps
        guidance = config["eval"].get("guidance") if guidance is None else guidance
    else:
        m = _load(model or "toy", model_path, device, resolution)
        if lora is not None:
            m.load_lora(lora)
    result = bench.evaluate(m, prompts=prompts, limit=limit, images_per_prompt=images_per_prompt,
                            steps=steps, guidance=guidance, seed=seed, ood=ood, progress=True)
    metrics = bench.metrics(result)
    typer.echo(eval_table(result, metrics))
    if json_out:
        write_json(json_out, {**result, "metrics": [asdict(x) for x in metrics]})
        typer.echo(f"wrote {json_out}")


@app.command()
def benchmarks():
    """List the benchmarks `bench eval --benchmark` runs and a preset's `eval.benchmarks` names."""
    from flowarena.core.registry import describe
    from flowarena.harness.benchmarks import BENCHMARKS

    for name, cls in BENCHMARKS.items():
        typer.echo(f"{name:10s} {describe(cls)}")


@app.command()
def rewards():
    """List the training rewards `bench run --reward` takes (several: name=weight,...)."""
    from flowarena.core.registry import describe
    from flowarena.rewards import REWARDS, reward_names

    for name in reward_names():
        typer.echo(f"{name:10s} {describe(REWARDS.get(name))}")


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

    _options(steps=(steps, Count), seed=(seed, Whole))
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

    _options(layouts=(layouts, Count), seed=(seed, Whole))
    specs = [parse_prompt(r["prompt"]) for r in load_toy_split(split)]
    typer.echo(judge_table(judge_accuracy(specs, layouts=layouts, seed=seed)))


# `bench run`'s recipe settings: each field of the preset, its [train] and its [eval] table is
# an option, generated from the dataclasses (harness/options.py); the command declares the rest
RECIPE = settings_of(Preset, "", skip=("name", "description", "model", "methods", "seeds", "train", "eval",
                                       "reward_options", "method_overrides"))
TRAIN = settings_of(TrainConfig, "train")
EVAL = settings_of(EvalSettings, "eval")


@app.command()
@friendly
@settings(RECIPE, TRAIN, EVAL)
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
    dump_config: bool = typer.Option(False, "--dump-config", help="Print the fully resolved recipe as TOML "
                                                                   "(what would run) and exit."),
    seeds: int = typer.Option(None, help="Seeds per method (default: the preset's; tables show mean ± "
                                         "stderr over seeds; a rerun with more adds seeds)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<preset>)."),
    device: str = DeviceOpt,
    reward_device: str = typer.Option(None, "--reward-device",
                                      help="Memory knob: where the rewards and the benchmarks' scorers "
                                           "(judge, PickScore) run, e.g. cuda:1 (default: --device)."),
    judge: str = JudgeOpt,
    judge_url: str = JudgeUrlOpt,
    detector: str = DetectorOpt,
    clip: str = ClipOpt,
    pickscore: str = PickOpt,
    pickscore_processor: str = PickProcOpt,
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
    jobs: int = typer.Option(None, "--jobs", help="Cells at once on this machine: N processes (shards) of "
                                                  "one thread each, so the results do not depend on N."),
    **given,
):
    """Train every method on the same model, prompts, noise and budget; evaluate each on the
    preset's benchmarks (toy: Soft-TIFA in-domain, the ood preference score; real recipes:
    GenEval2 between epochs and at the end, PickScore out of domain) and the KL to the
    pretrained model; print the comparison table. Every preset setting is an option below:
    --epochs, --lr, --group-size, --eval-limit, ... (`--dump-config` shows them all). Rerunning
    the same command resumes where it stopped."""
    from dataclasses import replace

    from flowarena.harness.run import recipe, run_experiment, to_toml
    from flowarena.harness.run.config import check_methods, split_methods

    _options(seeds=(seeds, Count), nproc=(nproc, Count), jobs=(jobs, Count))
    names = None if methods is None else split_methods(methods)
    if names == []:
        raise BadInput("--methods is empty: name at least one method (bench methods lists them)")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(relaunch(nproc))
    if config is not None and preset is not None:
        raise BadInput("give --preset or --config, not both (a config file can name a preset as its base)")
    options = _reward_options(judge=judge, judge_url=judge_url, detector=detector, clip=clip,
                              pickscore=pickscore, pickscore_processor=pickscore_processor)
    name, p = recipe(model, config or preset, reward_options=options,
                     **overrides(given, RECIPE, TRAIN, EVAL, error=BadInput))
    if names is not None:
        check_methods(names, p)  # unknown names, settings and duplicates: before any work, --dump-config too
    if dump_config:
        p = replace(p, methods=tuple(names or p.methods), seeds=p.seeds if seeds is None else seeds)
        typer.echo(to_toml(p), nl=False)
        return
    out = out or Path("runs") / (config.stem if config is not None else p.name)
    ran = list(names or p.methods)
    if reference is not None and reference not in ran:
        raise BadInput(f"--reference {reference} is not among the methods run ({', '.join(ran)})")
    if jobs is not None and JOB not in os.environ:
        if shard is not None or nproc > 1:
            raise BadInput("--jobs starts shards of its own: give it without --shard and --nproc")
        run_jobs(jobs, out, len(ran) * (p.seeds if seeds is None else seeds), reference)
    else:
        run_experiment(out, names, name, p, seeds, model_path, command="bench " + " ".join(sys.argv[1:]),
                       device=device, log_to=log_to, reward_device=reward_device,
                       reference=reference, shard=parse_shard(shard))  # p: overrides applied
    if JOB not in os.environ and int(os.environ.get("RANK", "0")) == 0:  # a job's parent prints
        _print_comparison(out, reference)


def _print_comparison(out: Path, reference: str | None) -> None:
    from flowarena.reports.summary import terminal_summary
    from flowarena.reports.tables import comparison

    c = comparison(out, reference)
    typer.echo(terminal_summary(c))
    for alarm in c.alarms:
        typer.echo(f"warning: {alarm.line()}")
    if c.mixed_precision:
        typer.echo(f"warning: {c.mixed_precision}")
    report = RunDir(out).report
    paired = f"; paired: {report / 'paired.md'}" if c.paired else ""
    typer.echo(f"\nfull tables: {report / 'tables.md'}{paired}; report: {report / 'index.html'}")


def _reward_options(**given) -> dict:
    """The CLI's model options, named as the rewards' constructors name them."""
    return {k: v for k, v in given.items() if v is not None}


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


@app.command("methods")
def methods_():
    """List the registered RL fine-tuning methods."""
    from flowarena.methods import get_method, method_names

    for name in method_names():
        cls = get_method(name)
        typer.echo(f"{name:18s} {cls.description}\n{'':18s} [{cls.paper}]")


@app.command()
def presets():
    """List the `bench run --preset` recipes (TOML files in harness/run/presets/): the model
    each is for, its size, methods and seeds. `bench run --preset NAME --dump-config` shows
    one in full; docs/recipes.md sets the real-model ones beside the peers' configurations."""
    from flowarena.harness.run import PRESETS

    width = max(len(n) for n in PRESETS.names()) + 1
    for name, p in PRESETS.items():
        t = p.train
        typer.echo(f"{name:{width}s} {p.description}\n{'':{width}s} model {p.model}: {p.epochs} epochs of "
                   f"{t.prompts_per_epoch} prompts x {t.group_size}, I = {t.inner_loops}, reward {p.reward}, "
                   f"eval {','.join(p.eval.benchmarks)}; methods {','.join(p.methods)}; {p.seeds} seed(s)")


@app.command()
def models():
    """List the models `--model` accepts."""
    from flowarena.core.registry import describe
    from flowarena.models import MODELS

    for name, cls in MODELS.items():
        typer.echo(f"{name:12s} {describe(cls)}")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
