"""The diagnostics every method logs the same way (docs/methods.md §8).

The trainer computes them, not the method, from each method's `StepLoss`, so they mean the
same for every method: per trained step k, statistics of ρ, KL(old ‖ new), the trust region
and the §3 decomposition of log ρ (`EpochDiagnostics`: the epoch row's `k<k>/…` keys, and the
per-sample draws kept under `diagnostics/`); once per cell, the ratio's noise floor and the
rounding in a change, and the warning when either reaches the trust region's scale; per
epoch, the training reward against the pretrained model's on the same rollouts.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import Tensor

from flowarena.core.results import diag_key
from flowarena.methods import dist
from flowarena.methods.base import StepLoss, StepTensors
from flowarena.methods.sde import gaussian_kl


@torch.no_grad()
def per_sample(st: StepTensors, out: StepLoss, kl_ref: Tensor | None) -> dict[str, Tensor]:
    """The per-sample quantities of one step's loss that the diagnostics summarise."""
    # log ρ = −KL + mean(ε·Δμ/s) per element: deterministic signal plus zero-mean noise
    safe = torch.where(st.std > 0, st.std, torch.ones_like(st.std))
    values = {
        # ρ stays float64 (as the log-probs are): ρ − 1 is often below float32's resolution
        "ratio": out.ratio.detach().double(), "kl": st.kl.detach().float(),
        "adv": st.advantages.float(), "trust": out.trust.float(),
        "noise": (st.noise * (st.mean.detach() - st.old_mean) / safe).flatten(1).mean(1).float()}
    if kl_ref is not None:
        values["kl_ref"] = kl_ref.detach().float()
    return values


class EpochDiagnostics:
    """One epoch's statistics per timestep index k (keys `k<k>/...` on the first pass,
    `k<k>/i<pass>/...` on later ones: results.diag_key), each the mean over the epoch's
    mini-batches, and the per-sample values behind them."""

    def __init__(self, trust_threshold: float | None):
        self.delta = trust_threshold  # δ of a KL-masked method: the share of steps at or above it
        self.stats: dict[str, list[float]] = defaultdict(list)
        self.draws: dict[str, list[Tensor]] = defaultdict(list)

    @torch.no_grad()
    def record(self, parts: list[dict[str, Tensor]], k: int, inner: int) -> None:
        """Term k of one mini-batch: the per-sample values of each micro-batch, gathered across
        processes. An SDE step has ρ, the KL to the old policy and the noise of log ρ
        (`per_sample`); a forward-process term has the change of velocity, mean((v_θ − v_old)²),
        and ρ only where its method forms one."""
        v = {name: dist.gather(torch.cat([p[name] for p in parts])) for name in parts[0]}
        A, trust = v["adv"], v["trust"] > 0.5
        pos, neg = A > 0, A < 0
        values = {}
        if "ratio" in v:
            ratio = v["ratio"]
            values.update(ratio_mean=ratio.mean(), ratio_std=ratio.std(correction=0),
                          ratio_min=ratio.min(), ratio_max=ratio.max())
        values.update(trust_frac=trust.float().mean(),
                      trust_frac_pos_adv=(trust & pos).float().sum() / pos.sum().clamp(min=1),
                      trust_frac_neg_adv=(trust & neg).float().sum() / neg.sum().clamp(min=1))
        if "kl" in v:
            kl = v["kl"]
            values.update(kl_mean=kl.mean(), kl_max=kl.max(), logratio_signal=-kl.mean(),
                          logratio_noise_std=v["noise"].std(correction=0))
            if self.delta is not None:
                values["kl_above_delta"] = (kl >= self.delta).float().mean()
        if "v_change" in v:
            values.update(v_change_mean=v["v_change"].mean(), v_change_max=v["v_change"].max())
        if "kl_ref" in v:
            values["kl_ref"] = v["kl_ref"].mean()
        for name, val in values.items():
            self.stats[diag_key(k, inner, name)].append(val.item())
        for name in ("ratio", "kl", "adv", "noise", "v_change"):
            if name in v:
                self.draws[name].append(v[name].cpu())
        like = v.get("ratio", A)  # float64 where ρ is
        self.draws["step"].append(torch.full_like(like, k).cpu())
        self.draws["inner"].append(torch.full_like(like, inner).cpu())

    def metrics(self) -> dict[str, float]:
        return {key: float(np.mean(vals)) for key, vals in self.stats.items()}

    def samples(self) -> dict[str, Tensor]:
        """The per-sample values of the epoch (`diagnostics/epoch_*.safetensors`)."""
        return {k: torch.cat(v) for k, v in self.draws.items()}


@torch.no_grad()
def noise_floor(trainer, ro) -> dict[str, float]:
    """The ratio's same-weights noise floor: the log-probabilities and mean of the first
    mini-batch's trained steps recomputed, before any update, with the weights that rolled them
    out, in the update's batch shape. Exactly 0 where the rollout and the update compute alike;
    on GPUs whose kernels depend on the batch shape, the |log ρ| and KL(old ‖ new) that a trust
    region sees from rounding alone. `trainer`, `ro`: the trainer's `Trainer` and `Rollout`."""
    cfg, n, rank = trainer.cfg, dist.world(), dist.rank()
    if not ro.window:  # a forward-process method's rollout: no stored step to recompute
        return {}
    first = torch.arange(min(cfg.minibatch_size, len(ro.prompts)))[rank::n]
    log_ratio, kl = [], []
    for j, k in enumerate(ro.window):
        for idx in first.split(cfg.micro_batch or len(first)):
            with trainer.precision():
                r, step_kl = trainer.recompute(ro, j, k, idx, trainer.velocity)
            log_ratio.append((trainer.log_prob(r) - ro.old_log_prob[j][idx]).double())
            kl.append(step_kl.double())
    lr, d = dist.gather(torch.cat(log_ratio)).abs(), dist.gather(torch.cat(kl))
    return {"floor_logratio_abs_mean": lr.mean().item(), "floor_logratio_abs_max": lr.max().item(),
            "floor_kl_mean": d.mean().item(), "floor_kl_max": d.max().item()}


@torch.no_grad()
def rounding_in_a_change(trainer, ro, mb: Tensor, before: dict[str, Tensor]) -> dict[str, float]:
    """The ratio's rounding in a change: for an off-policy mini-batch, log ρ and KL(old ‖ new)
    as the update computes them (the rollout's stored old step, the new weights in the trained
    steps' precision) and both sides recomputed in fp32 from the weights `before` the update and
    the current ones (bf16 weights, as on a GPU, are read in fp32 layer by layer:
    `models.base.fp32_over`). The difference is what rounding adds to the policy change the
    trust region is meant to see. In the update's micro-batches, so it needs no more memory
    than the update."""
    model = trainer.model
    if not ro.window:
        return {}
    micro = mb.split(trainer.cfg.micro_batch or len(mb))
    parts = [(j, k, idx) for j, k in enumerate(ro.window) for idx in micro]
    now = model.trainable_state_dict()
    fp32 = {}  # per side: each part's (log-prob, mean) in fp32
    for side, state in (("new", now), ("old", before)):
        model.load_trainable_state_dict(state)
        with model.precision(torch.float32):
            fp32[side] = [(trainer.log_prob(r), r.mean) for r, _ in
                          (trainer.recompute(ro, j, k, idx, trainer.velocity) for j, k, idx in parts)]
    model.load_trainable_state_dict(now)
    lr, lr32, kl, kl32 = [], [], [], []
    for (j, k, idx), (new_lp, new_mean), (old_lp, old_mean) in zip(parts, fp32["new"], fp32["old"]):
        with trainer.precision():
            r, step_kl = trainer.recompute(ro, j, k, idx, trainer.velocity)
        lr.append((trainer.log_prob(r) - ro.old_log_prob[j][idx]).double())
        kl.append(step_kl.double())
        lr32.append((new_lp - old_lp).double())
        kl32.append(gaussian_kl(old_mean, new_mean, ro.std[j][idx]).double())
    lr, lr32, kl, kl32 = (dist.gather(torch.cat(t)) for t in (lr, lr32, kl, kl32))
    return {"change_logratio_abs_mean": lr.abs().mean().item(),
            "change_logratio_abs_mean_fp32": lr32.abs().mean().item(),
            "change_kl_mean": kl.mean().item(), "change_kl_mean_fp32": kl32.mean().item(),
            "rounding_logratio_abs_mean": (lr - lr32).abs().mean().item(),
            "rounding_kl_mean": (kl - kl32).abs().mean().item()}


def floor_warning(floor: dict, trust_region: dict) -> str | None:
    """One line when a part of the ratio's noise floor reaches 10 % of the method's ε (on
    |log ρ| ≈ |ρ − 1|) or δ (on the KL): the same-weights floor, or the rounding in a change
    (run precision against fp32). The trust region would then act on rounding rather than on
    policy change."""
    parts = [("floor", "with unchanged weights"), ("rounding", "added by rounding to a change")]
    checks = [("ratio_clip", "logratio_abs_mean", "|log ρ|", "ε"),
              ("kl_threshold", "kl_mean", "KL(old ‖ new)", "δ")]
    found = []
    for part, how in parts:
        for region, key, what, sym in checks:
            limit, value = trust_region.get(region), floor.get(f"{part}_{key}")
            if limit and value is not None and value >= 0.1 * limit:
                found.append(f"{what} {value:.2g} {how} is {value / limit:.0%} of {sym} = {limit:g}")
    if not found:
        return None
    return (f"the ratio's noise floor ({'; '.join(found)}): the trust region acts on rounding, not only on "
            "policy change (train.trained_precision = \"fp32\" computes the trained steps in fp32)")


@torch.no_grad()
def reward_vs_base(trainer, ro, epoch: int) -> dict:
    """The policy's training reward minus the pretrained model's on the same prompts, initial
    noise, SDE window and noise: each process's first `baseline_groups` groups of the epoch's
    rollout sampled again with the adapter off. The raw reward moves with the epoch's prompt
    mix too; this difference moves with the policy alone (0 up to rounding at epoch 0, when the
    rollout's policy is still the pretrained one)."""
    cfg, G = trainer.cfg, trainer.cfg.group_size
    d = trainer.draws(epoch)
    mine = d["own"][:cfg.baseline_groups * G]
    if len(mine) == 0:
        return {}
    records = [d["records"][i] for i in mine]
    with trainer.model.reference():
        _, _, images = trainer.trajectories(d["x_init"][mine], ro.embeds.select(mine // G),
                                          [z[:len(mine)] for z in d["noises"]], d["window"], ro.sigmas,
                                          mine // G if cfg.group_noise == "shared" else None)
    base = trainer.reward(images, [r["prompt"] for r in records], records).scores.float().cpu()
    gap = dist.gather(ro.rewards[mine].float().cpu() - base).double()
    return {"reward_vs_base": gap.mean().item(), "reward_vs_base_se": (gap.std() / len(gap) ** 0.5).item(),
            "reward_base": dist.gather(base).mean().item()}
