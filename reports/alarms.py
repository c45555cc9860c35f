"""The reward-hacking alarm: a cell whose training reward rose while a held-out score fell.

The training reward is what the policy optimises; the held-out benchmark (in domain) and
the out-of-domain score are what the user wants. A cell is flagged when its reward rose by
more than the first epoch's standard error and a held-out score of its final evaluation is
below the pretrained model's by more than the difference's standard error (paired over
the same prompts and noise where the result files hold per-prompt values).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowarena.reports.paired import delta_vs


@dataclass(frozen=True)
class Fall:
    title: str
    base: float
    final: float
    se: float

    @property
    def delta(self) -> float:
        return self.final - self.base


@dataclass(frozen=True)
class HackingAlarm:
    model: str
    method: str
    seed: int
    reward_first: float
    reward_last: float
    falls: tuple[Fall, ...]

    def line(self) -> str:
        what = "; ".join(f"held-out {f.title} fell {f.base:.1f} → {f.final:.1f} "
                         f"(Δ {f.delta:+.1f} ± {f.se:.1f})" for f in self.falls)
        return (f"reward hacking? {self.model} {self.method} seed {self.seed}: the training reward rose "
                f"{self.reward_first:.3f} → {self.reward_last:.3f} while {what}")


def _fall(final, base, m) -> Fall | None:
    """The metric `m` of `final` below `base`'s by more than the difference's stderr."""
    found = delta_vs(final, base, m.key)
    if found is None or m.higher_is_better is None:
        return None
    delta, se = found
    worse = -delta if m.higher_is_better else delta
    return Fall(m.title, base.metric(m.key).value, m.value, se) if worse > se else None


def reward_hacking(results: dict) -> list[HackingAlarm]:
    """Every flagged cell of `results` ({(model, method): [CellResult per seed]})."""
    alarms = []
    for (model, method), cells in sorted(results.items()):
        for c in sorted(cells, key=lambda c: c.seed):
            tr = c.train_reward or {}
            if "first" not in tr or tr["last"] - tr["first"] <= tr.get("first_stderr", 0.0):
                continue  # the reward did not rise: nothing was hacked
            held_out = [m for m in c.final.metrics if m.role in ("primary", "secondary")]
            falls = tuple(f for m in held_out if (f := _fall(c.final, c.base, m)) is not None)
            if falls:
                alarms.append(HackingAlarm(model, method, c.seed, tr["first"], tr["last"], falls))
    return alarms
