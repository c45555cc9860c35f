"""`bench methods`, `rewards`, `benchmarks`, `presets`, `models`: what the registries hold, one
entry a line, in the registries' order (a new file's entry shows up with no other edit)."""

from __future__ import annotations

import typer


def benchmarks():
    """List the benchmarks `bench eval --benchmark` runs and a preset's `eval.benchmarks` names."""
    from flowarena.core.registry import describe
    from flowarena.harness.benchmarks import BENCHMARKS

    for name, cls in BENCHMARKS.items():
        typer.echo(f"{name:10s} {describe(cls)}")


def rewards():
    """List the training rewards `bench run --reward` takes (several: name=weight,...)."""
    from flowarena.core.registry import describe
    from flowarena.rewards import REWARDS, reward_names

    for name in reward_names():
        typer.echo(f"{name:10s} {describe(REWARDS.get(name))}")


def methods_():
    """List the registered RL fine-tuning methods, each with what it trains on: the sampled SDE
    steps, or the forward process of an ODE rollout's clean samples (docs/methods.md §5, §5b)."""
    from flowarena.methods import get_method, method_names

    kinds = {"sde": "SDE steps", "forward": "forward process"}
    for name in method_names():
        cls = get_method(name)
        typer.echo(f"{name:18s} {cls.description}\n{'':18s} [{kinds[cls.trains_on]}; {cls.paper}]")


def presets():
    """List the `bench run --preset` recipes (TOML files in harness/run/presets/): the model
    each is for, its size, methods and seeds. `bench run --preset NAME --dump-config` shows
    one in full; docs/recipes.md sets the real-model ones beside the peers' configurations."""
    from flowarena.harness.run import PRESETS

    width = max(len(n) for n in PRESETS.names()) + 1
    for name, p in PRESETS.items():
        t = p.train
        budget = f" (up to {p.compute_budget:,.0f} forward-equivalents)" if p.compute_budget else ""
        typer.echo(f"{name:{width}s} {p.description}\n{'':{width}s} model {p.model}: {p.epochs} epochs of "
                   f"{t.prompts_per_epoch} prompts x {t.group_size}{budget}, I = {t.inner_loops}, "
                   f"reward {p.reward}, eval {','.join(p.eval.benchmarks)}; methods {','.join(p.methods)}; "
                   f"{p.seeds} seed(s)")


def models():
    """List the models `--model` accepts."""
    from flowarena.core.registry import describe
    from flowarena.models import MODELS

    for name, cls in MODELS.items():
        typer.echo(f"{name:12s} {describe(cls)}")
