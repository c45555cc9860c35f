"""`bench`: the FlowArena command line.

Every user mistake (unknown model, empty prompt, a word the toy model does not know,
missing or corrupt weights, malformed prompt files) ends in one line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from harness.core.errors import FlowArenaError
from harness.core.fields import Count, Limit, NonNegative, Range, Steps, Whole, coerce
from harness.core.io import check_output

try:  # typer from 0.26 carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer, on click
    from click import exceptions as click_errors


class OneLineUsage(TyperGroup):
    """click's usage errors (an unknown option, a value of the wrong type or out of range) as
    one `error:` line, with click's exit code 2, instead of a framed box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:  # `bench` alone: the help, as before
            typer.echo(e.format_message())
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            ctx = getattr(e, "ctx", None)
            see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{see}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


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


class BadInput(FlowArenaError, ValueError):
    """A user error detected by the CLI itself."""


class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler's, `kill`'s) raised in the main thread: it unwinds like Ctrl-C, so
    that `bench run` marks its manifest "stopped" and the user reads one line."""


def _raise_stopped(signum, _frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Stopped


RESUMABLE = ("run", "pretrain")  # the commands whose rerun continues where they stopped


def friendly(fn):
    """Turn the project's user-facing errors into one line and exit code 1 (Ctrl-C: 130,
    SIGTERM: 143, as the shell reports a process the signal ended)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Python's default leaves SIGTERM fatal: no line, no cleanup. Only the main thread may
        # install a handler (a command called from another thread keeps the default).
        main = threading.current_thread() is threading.main_thread()
        term = signal.signal(signal.SIGTERM, _raise_stopped) if main else None
        try:
            return fn(*args, **kwargs)
        except Stopped:
            how = "; the same command resumes the run" if fn.__name__ in RESUMABLE else ""
            typer.echo(f"error: stopped by SIGTERM{how}", err=True)
            raise typer.Exit(143) from None
        except FlowArenaError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # unwritable output directory, disk full
            typer.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C: every file is written atomically, so nothing half-written
            typer.echo("error: interrupted; `bench run` and `bench pretrain` continue where they stopped "
                       "when run again", err=True)
            raise typer.Exit(130) from None
        finally:
            if term is not None:
                signal.signal(signal.SIGTERM, term)
    return wrapper


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
    from models import load_model

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
    from reports.grid import save_grid

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

    from harness.benchmarks import build_benchmark
    from harness.core.io import write_json
    from models import check_device
    from reports.tables import eval_table

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
        from harness.run import load_cell_policy

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
    from harness.benchmarks import BENCHMARKS
    from harness.core.registry import describe

    for name, cls in BENCHMARKS.items():
        typer.echo(f"{name:10s} {describe(cls)}")


@app.command()
def rewards():
    """List the training rewards `bench run --reward` takes (several: name=weight,...)."""
    from harness.core.registry import describe
    from rewards import REWARDS, reward_names

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
        from models.toy_pretrain import PretrainConfig, pretrain_toy

        cfg = PretrainConfig(seed=seed)
        cfg = replace(cfg, steps=steps) if steps is not None else cfg
        try:
            path = pretrain_toy(out, cfg)
        except ValueError as e:
            raise BadInput(str(e)) from None
    elif what == "toy-pick":
        from rewards.toy_pick import ToyPickTrainConfig, pretrain_toy_pick

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
    from harness.core.prompts import load_toy_split
    from harness.toyworld.grammar import parse_prompt
    from harness.toyworld.judge_check import judge_accuracy
    from reports.tables import judge_table

    _options(layouts=(layouts, Count), seed=(seed, Whole))
    specs = [parse_prompt(r["prompt"]) for r in load_toy_split(split)]
    typer.echo(judge_table(judge_accuracy(specs, layouts=layouts, seed=seed)))


@app.command()
@friendly
def run(
    methods: str = typer.Option(None, "--methods",
                                help="Comma-separated methods (see `bench methods`), each "
                                     "optionally with settings: dppo@delta=1e-6@beta=0.04. "
                                     "Default: the preset's (grpo,dppo for default)."),
    model: str = typer.Option(None, "--model", "-m",
                              help="toy (the default), sd35, flux1-dev, flux2-klein (`bench models`). "
                                   "Default: the model the preset is written for."),
    model_path: str = PathOpt,
    preset: str = typer.Option(None, help="The recipe (`bench presets`). Toy: smoke (a first look), "
                                           "sanity, default (the default); the paper's experiments, "
                                           "3 seeds each: main, main-multi, stability, ablation, "
                                           "sweep; paper (hours). Real models, the published "
                                           "recipes: sd35-geneval2 (sd35's default), sd35-pickscore, "
                                           "sd35-multi, flux1-dev-geneval2, flux2-klein-geneval2."),
    config: Path = typer.Option(None, "--config", help="Your own recipe: a preset TOML file (may "
                                                       "name a shipped preset as `base`; "
                                                       "`--dump-config` writes one to start from)."),
    dump_config: bool = typer.Option(False, "--dump-config", help="Print the fully resolved recipe "
                                                                   "as TOML (what would run) and "
                                                                   "exit without running."),
    seeds: int = typer.Option(None, help="Seeds per method (default: the preset's; tables show "
                                         "mean ± stderr over seeds)."),
    reward: str = typer.Option(None, help="Training reward instead of the preset's: a name "
                                          "(toy-tifa, toy-pick, toy-colour; real: geneval2, "
                                          "geneval, pickscore, vqascore; `bench rewards`) or "
                                          "weights, e.g. geneval2=1.0,pickscore=0.5."),
    train_prompts: str = typer.Option(None, "--train-prompts",
                                      help="Training prompts instead of the preset's: a shipped set "
                                           "(toy-train; geneval2-train: 20,000 GenEval2-template "
                                           "prompts disjoint from the test set; parti-train) or a "
                                           "file (GenEval2 JSONL, GenEval metadata, one prompt per line)."),
    aggregation: str = typer.Option(None, help="Several rewards: 'sum' (normalise the weighted "
                                               "sum) or 'normalised' (each reward per group)."),
    epochs: int = typer.Option(None, help="Training epochs instead of the preset's (scale a "
                                          "preset up on a bigger machine)."),
    prompts_per_epoch: int = typer.Option(None, "--prompts-per-epoch",
                                          help="Size knob: prompt groups per epoch "
                                               "(train.prompts_per_epoch)."),
    group_size: int = typer.Option(None, "--group-size", help="Size knob: samples per prompt group "
                                                              "(train.group_size)."),
    steps: int = typer.Option(None, "--steps", help="Size knob: sampling steps of rollouts and of "
                                                    "evaluation images (train.steps, eval.steps)."),
    resolution: int = typer.Option(None, "--resolution",
                                   help="Size knob: image side in pixels of a diffusers model "
                                        "(default: the preset's, 512 in the published recipes)."),
    micro_batch: int = typer.Option(None, "--micro-batch",
                                    help="Memory knob: trajectories per forward/backward pass of the "
                                         "update; gradients accumulate over a mini-batch, so the "
                                         "update is the same (train.micro_batch)."),
    rollout_batch: int = typer.Option(None, "--rollout-batch",
                                      help="Memory knob: trajectories sampled and decoded together "
                                           "in a rollout (train.rollout_batch)."),
    gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Memory knob: recompute the denoiser's activations "
                                                     "in the backward pass (train.gradient_checkpointing)."),
    trained_precision: str = typer.Option(None, "--trained-precision",
                                          help="auto (the model's: bf16 on a GPU) or fp32: the trained steps "
                                               "(rollout's SDE window, update) in fp32 with fp32 weights, "
                                               "bf16 elsewhere (train.trained_precision)."),
    offload_text_encoders: bool = typer.Option(None, "--offload-text-encoders/--no-offload-text-encoders",
                                               help="Memory knob: text encoders in host memory, prompt "
                                                    "embeddings cached there (train.offload_text_encoders, "
                                                    "train.prompt_cache_gb)."),
    eval_benchmark: str = typer.Option(None, "--eval-benchmark",
                                       help="What is measured between epochs and at the end instead "
                                            "of the preset's: comma-separated, e.g. geneval2,pickscore "
                                            "(eval.benchmarks; `bench benchmarks`)."),
    eval_limit: int = typer.Option(None, "--eval-limit", help="Size knob: in-domain prompts of each "
                                                              "evaluation between epochs, spread over "
                                                              "the set and its atom counts (eval.limit)."),
    ood_limit: int = typer.Option(None, "--ood-limit", help="Size knob: out-of-domain prompts (the "
                                                            "PickScore / toy preference ones) of each "
                                                            "evaluation between epochs (eval.ood_limit)."),
    final_limit: int = typer.Option(None, "--final-limit", help="Size knob: prompts of the final "
                                                                "evaluation on each test set (GenEval2's "
                                                                "official 800, parti-test), spread "
                                                                "evenly (eval.final_limit; default all)."),
    ood_prompts: Path = typer.Option(None, "--ood-prompts", help="PickScore's prompts instead of the "
                                                                 "shipped parti-test: a file, one prompt "
                                                                 "per line (eval.ood_prompts)."),
    device: str = DeviceOpt,
    reward_device: str = typer.Option(None, "--reward-device",
                                      help="Memory knob: where the rewards and the benchmarks' "
                                           "scorers (judge, PickScore) run, e.g. cuda:1 (default: "
                                           "--device); each loads once per run."),
    judge: str = JudgeOpt,
    judge_url: str = JudgeUrlOpt,
    detector: str = DetectorOpt,
    clip: str = ClipOpt,
    pickscore: str = PickOpt,
    pickscore_processor: str = PickProcOpt,
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (one per GPU with --device "
                                                 "cuda): relaunches this command under torchrun. "
                                                 "Or launch it yourself with torchrun / accelerate "
                                                 "launch."),
    log_to: str = typer.Option(None, "--log-to", help="Also stream the metrics live to "
                                                      "'tensorboard' (<out>/tensorboard) or 'wandb' "
                                                      "(offline without an account); optional extras."),
    reference: str = ReferenceOpt,
    shard: str = typer.Option(None, "--shard", help="Run every N-th cell from the I-th (I/N, e.g. 1/4): N "
                                                    "processes or machines sharing --out run one experiment "
                                                    "(a Slurm array); `bench report` merges their results."),
    jobs: int = typer.Option(None, "--jobs", help="Cells at once on this machine: N processes (shards) of "
                                                  "one thread each, so the results do not depend on N."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<preset>)."),
):
    """Train every method on the same model, prompts, noise and budget; evaluate each on
    the preset's benchmarks (toy: Soft-TIFA in-domain, the ood preference score; real
    recipes: GenEval2 on its val split between epochs and its official 800 at the end,
    PickScore out of domain) and the KL to the pretrained model; print the comparison
    table. `--model sd35` without `--preset` trains its published recipe. Rerunning the
    same command resumes where it stopped."""
    import sys
    from dataclasses import replace

    from harness.run import recipe, run_experiment, to_toml
    from harness.run.config import check_methods, split_methods
    from reports.summary import terminal_summary
    from reports.tables import comparison

    _options(seeds=(seeds, Count), nproc=(nproc, Count), jobs=(jobs, Count))
    names = None
    if methods is not None:
        names = split_methods(methods)
        if not names:
            raise BadInput("--methods is empty: name at least one method (bench methods lists them)")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch(nproc))
    if config is not None and preset is not None:
        raise BadInput("give --preset or --config, not both (a config file can name a preset as its base)")
    options = _reward_options(judge=judge, judge_url=judge_url, detector=detector, clip=clip,
                              pickscore=pickscore, pickscore_processor=pickscore_processor)
    _options(eval_limit=(eval_limit, Limit), ood_limit=(ood_limit, Limit), final_limit=(final_limit, Limit))
    benches = None
    if eval_benchmark is not None:
        benches = [b.strip() for b in eval_benchmark.split(",") if b.strip()]
        if not benches:
            raise BadInput("--eval-benchmark is empty")
    train = {k: v for k, v in dict(reward_aggregation=aggregation, prompts_per_epoch=prompts_per_epoch,
                                   group_size=group_size, steps=steps, micro_batch=micro_batch,
                                   rollout_batch=rollout_batch,
                                   gradient_checkpointing=gradient_checkpointing,
                                   offload_text_encoders=offload_text_encoders,
                                   trained_precision=trained_precision).items() if v is not None}
    evals = dict(steps=steps, limit=eval_limit, ood_limit=ood_limit, final_limit=final_limit,
                 benchmarks=benches, ood_prompts=None if ood_prompts is None else str(ood_prompts))
    evals = {k: v for k, v in evals.items() if v is not None}
    overrides = dict(epochs=epochs, reward=reward, reward_options=options, train_prompts=train_prompts,
                     resolution=resolution, train=train or None, eval=evals or None)
    name, p = recipe(model, config or preset, **overrides)
    if names is not None:
        check_methods(names, p)  # unknown names, settings and duplicates: before any work, --dump-config too
    if dump_config:
        p = replace(p, methods=tuple(names or p.methods), seeds=p.seeds if seeds is None else seeds)
        typer.echo(to_toml(p), nl=False)
        return
    out = out or Path("runs") / (config.stem if config is not None else p.name)
    part = _shard(shard)
    ran = list(names or p.methods)
    if reference is not None and reference not in ran:
        raise BadInput(f"--reference {reference} is not among the methods run ({', '.join(ran)})")
    if jobs is not None and JOB not in os.environ:
        if shard is not None or nproc > 1:
            raise BadInput("--jobs starts shards of its own: give it without --shard and --nproc")
        _run_jobs(jobs, out, len(ran) * (p.seeds if seeds is None else seeds), reference)
    else:
        run_experiment(out, names, name, p, seeds, model_path, command="bench " + " ".join(sys.argv[1:]),
                       device=device, log_to=log_to, reward_device=reward_device,
                       reference=reference, shard=part)  # p: overrides applied
    if JOB in os.environ:
        return  # a job of --jobs: its parent prints the comparison
    if int(os.environ.get("RANK", "0")) == 0:
        c = comparison(out, reference)
        typer.echo(terminal_summary(c))
        for alarm in c.alarms:
            typer.echo(f"warning: {alarm.line()}")
        if c.mixed_precision:
            typer.echo(f"warning: {c.mixed_precision}")
        report = out / "report"
        paired = f"; paired: {report / 'paired.md'}" if c.paired else ""
        typer.echo(f"\nfull tables: {report / 'tables.md'}{paired}; report: {report / 'index.html'}")


def _shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N); (1, 1) when absent."""
    if text is None:
        return 1, 1
    i, _, n = text.partition("/")
    if not (i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise BadInput(f"--shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return int(i), int(n)


JOB = "FLOWARENA_JOB"  # set in the processes `bench run --jobs` starts


def _run_jobs(jobs: int, out: Path, cells: int, reference: str | None) -> None:
    """This `bench run` as `jobs` shards at once (one thread each), their output in out/logs/;
    the run's progress from the cells' result files; then the report of all of them."""
    import signal
    import subprocess
    import sys
    import time

    from harness.run.experiment import time_left
    from reports.report import build_report

    args = _argv_without("--jobs", "--out", "-o")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, JOB: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    def finished() -> int:
        return len(list(out.glob("*/*/seed*/result.json")))

    t0, before = time.perf_counter(), finished()
    shown = before
    procs = []
    # Ctrl-C, or a scheduler's SIGTERM to this process alone, ends the jobs too: they are this
    # process's children and would train on. The handlers only note the stop, so that no signal
    # lands inside a Popen whose child has started but is not yet in `procs`.
    stops: list[int] = []

    def note_stop(signum, _frame) -> None:
        stops.append(signum)

    previous = {s: signal.signal(s, note_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for k in range(1, jobs + 1):
            # appended to, never truncated: a refused second command on a directory in use, or a
            # resumption, must not wipe the logs of the jobs that ran (or still run) there
            log = open(logs / f"job-{k}-of-{jobs}.log", "a")  # noqa: SIM115 - open while the job runs
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: job {k} of {jobs} starts ---\n")
            log.flush()
            cmd = [sys.executable, "-m", "harness.cli", *args, "--out", str(out), "--shard", f"{k}/{jobs}"]
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        while not stops and any(proc.poll() is None for proc, _ in procs):
            time.sleep(0.5)
            if (done := finished()) != shown:
                shown, elapsed = done, time.perf_counter() - t0
                typer.echo(f"{done}/{cells} cells done; {time_left(elapsed, done - before, cells - done)}",
                           err=True)
        if stops:
            for proc, _ in procs:
                proc.terminate()  # every write is atomic and a stale cell lock is taken over on resume
            for proc, log in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            typer.echo(f"error: stopped with {finished()}/{cells} cells done; the same command resumes the "
                       "run", err=True)
            raise typer.Exit(130)  # 128 + SIGINT, the shell's code for an interrupted command
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for k, (proc, log) in enumerate(procs, start=1):
        log.close()
        if proc.returncode:
            path = logs / f"job-{k}-of-{jobs}.log"
            lines = [ln.strip("│╭╮╰╯─ ") for ln in path.read_text().splitlines()]  # typer's boxes too
            last = ([ln for ln in lines if ln] or [""])[-1]
            why = last.removeprefix("error: ")
            raise BadInput(f"job {k} of {jobs} stopped (exit {proc.returncode}): {why} (its log: {path})")
    build_report(out, reference)


def _argv_without(*options: str) -> list[str]:
    """This command line's arguments less `options` and their values (to launch it again)."""
    import sys

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in options)):
            args.append(a)
    return args


def _relaunch(nproc: int) -> int:
    """This `bench run` again, without --nproc, as `torchrun --standalone --nproc_per_node N`."""
    import subprocess
    import sys

    args = _argv_without("--nproc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "harness.cli", *args]
    return subprocess.run(cmd).returncode


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
    from reports.report import build_report

    if not (run_dir / "manifest.json").is_file():
        raise BadInput(f"{run_dir} is not a run directory (no manifest.json)")
    if reference is not None:
        from harness.core.results import read_json

        ran = read_json(run_dir / "manifest.json").get("config", {}).get("methods", [])
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
    from harness.run import export_cell

    check_output(out, [cell], file=out.suffix == ".safetensors")  # never over the cell's own checkpoint
    path, config = export_cell(cell, out)
    typer.echo(f"wrote {path} ({config['model']}, {config['method']}, seed {config['seed']})")


@app.command("methods")
def methods_():
    """List the registered RL fine-tuning methods."""
    from methods import get_method, method_names

    for name in method_names():
        cls = get_method(name)
        typer.echo(f"{name:18s} {cls.description}\n{'':18s} [{cls.paper}]")


@app.command()
def presets():
    """List the `bench run --preset` recipes (TOML files in harness/run/presets/): the model
    each is for, its size, methods and seeds. `bench run --preset NAME --dump-config` shows
    one in full; docs/recipes.md sets the real-model ones beside the peers' configurations."""
    from harness.run import PRESETS

    width = max(len(n) for n in PRESETS.names()) + 1
    for name, p in PRESETS.items():
        t = p.train
        typer.echo(f"{name:{width}s} {p.description}\n{'':{width}s} model {p.model}: {p.epochs} epochs of "
                   f"{t.prompts_per_epoch} prompts x {t.group_size}, I = {t.inner_loops}, reward {p.reward}, "
                   f"eval {','.join(p.eval.benchmarks)}; methods {','.join(p.methods)}; {p.seeds} seed(s)")


@app.command()
def models():
    """List the models `--model` accepts."""
    from harness.core.registry import describe
    from models import MODELS

    for name, cls in MODELS.items():
        typer.echo(f"{name:12s} {describe(cls)}")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
