"""Peak GPU memory per phase of one epoch of a real recipe, planned on the CPU at full size.

The recipe's model is built at its full-size architecture (SD3.5-medium 2.24 B, FLUX.1-dev
12 B, FLUX.2 [klein] 9 B) under torch's FakeTensorMode (benchmarks/fake_models.py): every tensor
has its shape, dtype and storage size but no values, so nothing is allocated and nothing is
downloaded. The model adapter (models/diffusers_flow.py) and the trainer (methods/trainer.py)
run their own code on it: bf16 weights under bf16 autocast, the recipe's LoRA (fp32 adapter
weights) on the adapter's targets, gradient checkpointing where the recipe sets it. A dispatch
mode counts the bytes of live storages and keeps the peak. One pass of each kind is traced:

- rollout: one rollout batch's velocity and SDE step (no gradient);
- decode: the VAE decode of one rollout batch at the recipe's resolution;
- update: one micro-batch of the trainer's `_step_loss` (forward with gradient, the method's
  loss, β·KL_ref) and its backward; `reference`: the peak while the reference forward of
  that micro-batch runs (β > 0), the training graph alive;
- evaluation: one sampling batch (`FlowModel.generate`'s 64, or the eval limit) and its decode
  (8 latents a VAE call: `DiffusersFlowModel.decode_batch`).

On the card throughout (allocated before the traces): the weights, the LoRA weights, their
gradients (set to None only at the next mini-batch), AdamW's two moments and the trainer's
EMA of them, all fp32. Counted, not traced (from the recipe's shapes): what the rollout keeps
on the card for the update (x_k, x_{k+1}, old mean, std, old log-prob per window step, the
initial noise and one row of prompt embeddings per prompt; at the rollout's end its batches and
their concatenation, twice the trajectories, for a moment), the raw weights the
evaluation sets aside while it uses the EMA, and the reward models from their parameter
counts (VQA judge Qwen3-VL-8B 8.77 B in bf16, PickScore's CLIP ViT-H/14 0.99 B in fp16) with
an activation allowance (`JUDGE_ACTIVATIONS_GB`, `PICKSCORE_ACTIVATIONS_GB`); the recipes load
them for the whole run. Text encoders are offloaded in every recipe and not counted. CUDA's
allocator cache and fragmentation are not modelled (reserved memory runs some GB over the
allocated peak); the trace's attention is CPU flash attention, which saves what CUDA's does.

Autocast is the CPU's (the op lists differ from CUDA's in places; both run linear layers,
convolutions and attention in bf16 and normalisations in fp32).

    python benchmarks/memory_plan.py --preset sd35-geneval2            # one recipe, a table
    python benchmarks/memory_plan.py --preset all --json plan.json     # every real recipe
    python benchmarks/memory_plan.py --preset all --scaled             # shallow models, seconds

"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fake_models import ARCHS, BLOCKS, build, embeds, embeds_bytes, no_module_moves  # noqa: E402

GB = 2**30
CARD_GB = 80
JUDGE_PARAMS, JUDGE_ACTIVATIONS_GB = 8.77e9, 2.0  # Qwen3-VL-8B-Instruct; one image + questions a call
PICKSCORE_PARAMS, PICKSCORE_ACTIVATIONS_GB = 0.99e9, 0.5  # CLIP ViT-H/14, fp16 on CUDA (rewards/pickscore.py)
GENERATE_BATCH = 64  # FlowModel.generate's batch_size: the evaluation samples this many at once


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that ops have made and that are still alive, and their peak
    since `reset()` (a storage counts once, however many views share it)."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._seen and self._seen[key]() is st:
            return
        size = st.nbytes()
        self.now += size
        self.peak = max(self.peak, self.now)

        def freed(_, key=key, size=size):
            self.now -= size
            self._seen.pop(key, None)
        self._seen[key] = weakref.ref(st, freed)

    def reset(self) -> None:
        self.peak = self.now


def trace(preset, blocks: tuple[int, int] | None = None) -> dict[str, float]:
    """Bytes: the weights and training state on the card, and the peak each traced pass adds."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from flowarena.methods.trainer import Rollout

    tc, ev = preset.train, preset.eval
    raw: dict[str, float] = {}
    live = LiveBytes()
    with FakeTensorMode(allow_non_fake_inputs=True), live, no_module_moves():
        arch, model, trainer = build(preset, blocks)
        latent, net = model.latent_shape, model.get_denoiser()
        for p in trainer.params:  # gradients stay allocated between updates (set to None at the next)
            p.grad = torch.zeros_like(p)
        adam = [torch.zeros_like(p) for p in trainer.params for _ in range(2)]  # exp_avg, exp_avg_sq
        raw.update(params=sum(p.numel() for p in net.parameters()),
                   lora=sum(p.numel() for p in trainer.params),
                   weights=sum(p.numel() * p.element_size() for p in net.parameters() if not p.requires_grad),
                   resident=live.now)
        B = tc.prompts_per_epoch * tc.group_size
        cfg = arch.cfg_capable and tc.guidance > 1
        sig = model.sigmas(tc.steps).tolist()  # floats: a fake σ could not be read
        k = 0  # the first step: the same shapes as every other

        def peak_of(fn) -> float:
            live.reset()
            base = live.now
            fn()
            return live.peak - base

        rb = min(tc.rollout_batch or B, B)

        def rollout():
            with torch.no_grad():
                x = torch.empty(rb, *latent)
                v = trainer.velocity(x, k, sig, embeds(arch, rb, cfg))
                trainer._step(x, v, k, sig, noise=torch.empty_like(x))
        raw["rollout_pass"] = peak_of(rollout)
        raw["decode_pass"] = peak_of(lambda: model.decode(torch.empty(rb, *latent)))

        mb = min(tc.micro_batch or tc.minibatch_size, B)
        ref = {}

        def update():
            def t():
                return torch.empty(mb, *latent)
            ro = Rollout([""] * mb, [{}] * mb, embeds(arch, mb, cfg), [k], sig, [t()], [t()], [t()],
                         [torch.full((mb, 1, 1, 1), 0.1)], [torch.zeros(mb, dtype=torch.float64)],
                         torch.empty(0), torch.empty(0), torch.empty(0), torch.zeros(mb), torch.zeros(mb))
            velocity = model.velocity

            def watched(*a, **kw):  # the reference forward (β > 0): adapters off, no gradient
                if torch.is_grad_enabled():
                    return velocity(*a, **kw)
                high = live.peak
                live.reset()
                try:
                    return velocity(*a, **kw)
                finally:
                    ref["top"] = live.peak
                    live.peak = max(high, live.peak)
            with mock.patch.object(model, "velocity", watched):
                loss = trainer._step_loss(ro, 0, k, torch.arange(mb))[0].mean()
            ref["saved"] = live.now  # what the backward will read: linear in the blocks
            loss.backward()
        start = live.now
        raw["update_pass"] = peak_of(update)
        raw["update_saved"] = ref["saved"] - start
        raw["reference_pass"] = ref["top"] - start if ref.get("top") else 0.0  # the training graph alive
        for p in trainer.params:
            p.grad = torch.zeros_like(p)

        nb = min(GENERATE_BATCH, ev.limit or GENERATE_BATCH)
        ecfg = arch.cfg_capable and (ev.guidance or model.default_guidance) > 1
        esig = model.sigmas(ev.steps or model.default_steps).tolist()

        def evaluation():
            with torch.no_grad():
                trainer.velocity(torch.empty(nb, *latent), 0, esig, embeds(arch, nb, ecfg))
        raw["eval_pass"] = peak_of(evaluation)
        raw["eval_decode"] = peak_of(lambda: model.decode(torch.empty(nb, *latent)))
        raw.update(latent=latent, lora_rank=model.lora_rank, eval_batch=nb)
        del adam
    return raw


def scaled_trace(preset) -> dict[str, float]:
    """`trace` at full depth from three shallow models, one or two blocks of each kind: every
    number is linear in the blocks of each kind (weights; activations saved per block in the
    update; a no-gradient pass's peak is one block's, the same at any depth), so
    V(a, b) = V(1, 1) + (a − 1)·[V(2, 1) − V(1, 1)] + (b − 1)·[V(1, 2) − V(1, 1)]."""
    (a, b), _ = BLOCKS[preset.model]
    traces = base, more_a, more_b = [trace(preset, blocks) for blocks in ((1, 1), (2, 1), (1, 2))]
    out = dict(base)
    for key, v in base.items():
        if isinstance(v, (int, float)) and key not in ("lora_rank", "eval_batch"):
            out[key] = v + (a - 1) * (more_a[key] - v) + (b - 1) * (more_b[key] - v)
    # the update's peak is what its forward saved (linear) plus a transient above it: one block's
    # recomputation under gradient checkpointing, or the loss's tensors, whichever is larger in a
    # shallow model (a conservative transient: at full depth the saved part dominates)
    out["update_pass"] = out["update_saved"] + max(t["update_pass"] - t["update_saved"] for t in traces)
    return out


def plan(preset_name: str, scaled: bool = False, cache: dict | None = None, **overrides) -> dict:
    """The recipe's plan, GB per phase on the policy's card and on one card with the reward models;
    `overrides` as `harness.run.config.resolve` takes them (e.g. train={"micro_batch": 16}).
    `scaled`: traced on shallow models and extrapolated to full depth (`scaled_trace`, seconds).
    `cache`: traces by what they depend on, so recipes that differ in other settings share one."""
    from flowarena.core.errors import FlowArenaError
    from flowarena.harness.run.config import resolve

    preset = resolve(preset_name, **overrides)
    if preset_name in unplanned_presets():
        raise FlowArenaError(f"preset {preset_name} trains a forward-process method, whose update this "
                             "plan does not model yet")
    if preset.model not in ARCHS:
        raise FlowArenaError(f"preset {preset_name} is for the {preset.model} model: a memory plan is for "
                             f"the real recipes ({', '.join(real_presets())})")
    t0 = time.perf_counter()
    # what a trace depends on: recipes that differ elsewhere (prompts per epoch, reward) share one
    tc, ev, B = preset.train, preset.eval, preset.train.prompts_per_epoch * preset.train.group_size
    key = (preset.model, preset.resolution, min(tc.rollout_batch or B, B),
           min(tc.micro_batch or tc.minibatch_size, B), tc.gradient_checkpointing, tc.lora_rank,
           tc.lora_alpha, tc.lora_targets, tc.guidance, tc.beta > 0, tc.trained_precision, tc.steps, ev.limit,
           ev.guidance, ev.steps, scaled)
    if cache is not None and key in cache:
        raw = cache[key]
    else:
        raw = scaled_trace(preset) if scaled else trace(preset)
        if cache is not None:
            cache[key] = raw
    tc, arch = preset.train, ARCHS[preset.model]
    B = tc.prompts_per_epoch * tc.group_size
    elem = 1
    for d in raw["latent"]:
        elem *= d
    trajectories = tc.sde_window * B * (3 * elem * 4 + 4 + 8)  # x, x', mean in fp32; std, log p in fp64
    # one row of prompt embeddings per prompt (Rollout.prompt_embeds), not per trajectory
    cfg = arch.cfg_capable and tc.guidance > 1
    kept = trajectories + B * elem * 4 + embeds_bytes(arch, tc.prompts_per_epoch, cfg)
    res = raw["resident"] / GB
    judge = JUDGE_PARAMS * 2 / GB + JUDGE_ACTIVATIONS_GB
    pick = PICKSCORE_PARAMS * 2 / GB + PICKSCORE_ACTIVATIONS_GB
    on_card = res + kept / GB  # during the rollout (at its end) and the update
    policy = {
        # at its end the rollout's batches and their concatenation are both alive, for a moment
        "rollout": on_card + max(raw["rollout_pass"], trajectories) / GB,
        "decode": on_card + raw["decode_pass"] / GB,
        "reward": on_card,  # the rollout's batches are freed once concatenated
        "update": on_card + raw["update_pass"] / GB,
        "reference": on_card + raw["reference_pass"] / GB if tc.beta > 0 else None,
        # with an EMA, the evaluation sets the raw trained weights aside (Trainer.ema_weights)
        "evaluation": res + (raw["lora"] * 4 * (getattr(tc, "ema_decay", None) is not None)
                             + max(raw["eval_pass"], raw["eval_decode"])) / GB,
    }
    policy = {name: gb for name, gb in policy.items() if gb is not None}  # no reference forward at β = 0
    peak = max(policy.values())
    return {
        "preset": preset.name, "model": preset.model, "resolution": preset.resolution,
        "traced": "scaled from shallow models" if scaled else "full size",
        "settings": {"prompts x group": f"{tc.prompts_per_epoch} x {tc.group_size}",
                     "micro_batch": tc.micro_batch,
                     "rollout_batch": tc.rollout_batch, "gradient_checkpointing": tc.gradient_checkpointing,
                     "lora_rank": raw["lora_rank"], "beta": tc.beta, "sde_window": tc.sde_window,
                     "eval_batch": raw["eval_batch"]},
        "params_b": round(raw["params"] / 1e9, 2), "lora_params_m": round(raw["lora"] / 1e6, 1),
        "weights_gb": round(raw["weights"] / GB, 2), "resident_gb": round(res, 2),
        "rollout_kept_gb": round(kept / GB, 2), "trajectories_gb": round(trajectories / GB, 2),
        **{f"{k}_gb": round(raw[k] / GB, 2) for k in ("rollout_pass", "decode_pass", "update_pass",
                                                      "reference_pass", "eval_pass", "eval_decode")},
        "phases": {name: {"policy_card_gb": round(gb, 1), "one_card_gb": round(gb + judge + pick, 1)}
                   for name, gb in policy.items()},
        "reward_card_gb": round(judge + pick, 1),
        "peak_policy_card_gb": round(peak, 1), "peak_one_card_gb": round(peak + judge + pick, 1),
        "fits_one_card": peak + judge + pick <= CARD_GB, "fits_two_cards": peak <= CARD_GB,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def real_presets() -> list[str]:
    """The real recipes this plan models: those whose methods train on SDE steps (the plan's
    update is a window step's; a forward-process recipe's, `unplanned_presets`, is not modelled)."""
    from flowarena.harness.run import PRESETS

    return sorted(n for n, p in PRESETS.items() if p.model != "toy" and n not in unplanned_presets())


def unplanned_presets() -> list[str]:
    """Real recipes of forward-process methods (nft, awm, dgpo): their update and the old
    velocities kept before it are not modelled here yet."""
    from flowarena.harness.run import PRESETS
    from flowarena.methods import get_method

    return sorted(n for n, p in PRESETS.items()
                  if p.model != "toy" and any(get_method(m).trains_on != "sde" for m in p.methods))


def table(plans: list[dict]) -> str:
    phases = ["rollout", "decode", "reward", "update", "reference", "evaluation"]
    head = ("| recipe | " + " | ".join(phases)
            + " | peak, policy card | reward card | peak, one card | fits 80 GB |")
    lines = [head, "|" + "---|" * (len(phases) + 5)]
    for p in plans:
        cells = [f"{p['phases'][ph]['policy_card_gb']:.1f}" if ph in p["phases"] else "–" for ph in phases]
        fits = "yes" if p["fits_one_card"] else ("with the reward models on a second card"
                                                 if p["fits_two_cards"] else "**no**")
        lines.append(f"| `{p['preset']}` | " + " | ".join(cells) + f" | {p['peak_policy_card_gb']:.1f} | "
                     f"{p['reward_card_gb']:.1f} | {p['peak_one_card_gb']:.1f} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from flowarena.core.errors import FlowArenaError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True, help="a real recipe (bench presets), or 'all'")
    ap.add_argument("--micro-batch", type=int, help="override the recipe's micro-batch")
    ap.add_argument("--rollout-batch", type=int, help="override the recipe's rollout batch")
    ap.add_argument("--json", type=Path, help="also write the plans here")
    ap.add_argument("--scaled", action="store_true",
                    help="trace shallow models and extrapolate to full depth (seconds, not minutes)")
    args = ap.parse_args(argv)
    train = {k: v for k, v in (("micro_batch", args.micro_batch), ("rollout_batch", args.rollout_batch)) if v}
    try:
        names = real_presets() if args.preset == "all" else [args.preset]
        cache: dict = {}
        plans = [plan(n, scaled=args.scaled, cache=cache, train=train) for n in names]
    except FlowArenaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(plans))
    if args.json:
        args.json.write_text(json.dumps(plans, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
