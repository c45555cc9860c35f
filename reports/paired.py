"""Method against method, paired: the difference of each method to a reference method on
the same seeds, prompts and evaluation noise, with a 95 % bootstrap interval, and what
the run's seeds can resolve.

Two cells of one seed share everything but the method: the training prompts, noise and
mini-batch order follow from (seed, epoch), and every evaluation uses the same prompts
and initial noise. So a difference is paired twice, over seeds and over prompts: the
matrix D[s, p] = method − reference of seed s on prompt p. Its mean is the estimate; the
interval is a two-way percentile bootstrap (seeds and prompts resampled with replacement,
independently; 10,000 resamples, a fixed generator, so a table is reproducible), which
keeps both sources of variation: training randomness (between seeds) and the choice of
evaluation prompts. It is conservative: where neither seeds nor prompts differ systematically
it overstates the variance, by up to 3 times for pure noise (Owen 2007, "the pigeonhole
bootstrap"); where one of them dominates, as training randomness does here, it is close.
With one seed only the prompts vary, and the interval says nothing of training randomness;
a metric without per-prompt values is bootstrapped over seeds alone (none with one seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flowarena.tasks.soft_tifa import stderr

RESAMPLES = 10_000
Z_POWER = 1.96 + 0.84  # a two-sided 5 % test with 80 % power


@dataclass(frozen=True)
class PairedDiff:
    model: str
    method: str
    reference: str
    key: str
    title: str
    mean: float
    low: float | None
    high: float | None
    seeds: int
    prompts: int | None
    """Prompts each seed's difference is paired over (None: per seed only)."""
    se: float | None
    """The bootstrap's standard deviation of the mean difference."""

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def text(self, digits: int | None = 1) -> str:
        fmt = "{:+.1e}" if digits is None else f"{{:+.{digits}f}}"
        if self.low is None:
            return fmt.format(self.mean) + " (no interval)"
        mark = " *" if self.excludes_zero else ""
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]{mark}"

    def resolvable(self) -> float | None:
        """The smallest true difference this design detects with 80 % power at 5 %."""
        return None if self.se is None else Z_POWER * self.se

    def seeds_for(self, difference: float) -> int | None:
        """About how many seeds (same prompts) would resolve `difference`: the seed-level
        standard error shrinks as 1/√seeds (prompt noise shared, so this is optimistic
        where prompts dominate)."""
        if self.se is None or self.se == 0 or difference <= 0:
            return None
        return max(2, math.ceil(self.seeds * (Z_POWER * self.se / difference) ** 2))


def bootstrap_mean(d: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Percentile 95 % interval and standard deviation of the mean of D [seeds, prompts]
    under resampling of seeds and of prompts (a [seeds] vector: seeds only)."""
    d = np.atleast_2d(np.asarray(d, dtype=float))
    if d.shape[0] == 1 and d.shape[1] == 1:
        raise ValueError("one value has no interval")
    rng = np.random.default_rng(seed)
    S, P = d.shape
    ws = rng.multinomial(S, np.full(S, 1 / S), size=resamples) if S > 1 else np.ones((resamples, 1))
    wp = rng.multinomial(P, np.full(P, 1 / P), size=resamples) if P > 1 else np.ones((resamples, 1))
    stats = (ws * (wp @ d.T)).sum(1) / (S * P)  # Σ_s Σ_p w_s w_p D[s, p], normalised
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high), float(stats.std(ddof=1))


def _per_prompt(record, key: str) -> list[float] | None:
    if key == "kl":
        return (record.kl_to_pretrained or {}).get("per_prompt")
    m = record.metric(key)
    return None if m is None else m.per_prompt


def _value(record, key: str) -> float | None:
    if key == "kl":
        return record.kl
    m = record.metric(key)
    return None if m is None else m.value


def compared_metrics(record) -> list[tuple[str, str, int | None]]:
    """(key, title, digits) of what a method is compared on: the primary metrics, the
    out-of-domain ones, and the KL to the pretrained model."""
    keys = [(m.key, m.title, m.digits) for m in record.metrics if m.role in ("primary", "secondary")]
    if record.kl is not None:
        keys.append(("kl", "KL", None))
    return keys


def paired_differences(results: dict, reference: str) -> list[PairedDiff]:
    """Every method's difference to `reference` (per model) on its compared metrics, over
    the seeds both finished. `results`: {(model, method): [CellResult per seed]}."""
    out = []
    for (model, method), cells in sorted(results.items()):
        ref = {r.seed: r for r in results.get((model, reference), [])}
        pairs = [(c, ref[c.seed]) for c in sorted(cells, key=lambda c: c.seed) if c.seed in ref]
        if method == reference or not pairs:
            continue
        for key, title, _ in compared_metrics(pairs[0][0].final):
            out.append(_difference(model, method, reference, key, title, pairs))
    return [d for d in out if d is not None]


def _difference(model, method, reference, key, title, pairs) -> PairedDiff | None:
    per = [(_per_prompt(c.final, key), _per_prompt(r.final, key)) for c, r in pairs]
    if all(a is not None and b is not None and len(a) == len(b) for a, b in per) and \
            len({len(a) for a, _ in per}) == 1:
        scale = 1.0 if key == "kl" else table_scale(pairs[0][0].final, key)
        d = np.array([np.subtract(a, b) for a, b in per]) * scale
        prompts = d.shape[1]
    else:  # per seed only (the KL, or result files written before per-prompt values)
        values = [(_value(c.final, key), _value(r.final, key)) for c, r in pairs]
        if any(a is None or b is None for a, b in values):
            return None
        d, prompts = np.array([[a - b] for a, b in values]), None
    mean = float(d.mean())
    if d.size == 1:
        return PairedDiff(model, method, reference, key, title, mean, None, None, len(pairs), prompts, None)
    low, high, se = bootstrap_mean(d)
    return PairedDiff(model, method, reference, key, title, mean, low, high, len(pairs), prompts, se)


def delta_vs(record, other, key: str) -> tuple[float, float] | None:
    """`record`'s metric `key` minus `other`'s, in table units, with its stderr: paired over
    prompts where both hold per-prompt values on the same prompts, else from the two stderrs."""
    m, b = record.metric(key), other.metric(key)
    if m is None or b is None:
        return None
    if m.per_prompt and b.per_prompt and len(m.per_prompt) == len(b.per_prompt):
        d = np.subtract(m.per_prompt, b.per_prompt) * table_scale(record, key)
        return float(d.mean()), stderr(d)
    return m.value - b.value, math.hypot(m.stderr or 0.0, b.stderr or 0.0)


def table_scale(record, key: str) -> float:
    """The factor from a metric's per-prompt values to its table units: its value is their
    mean, so the factor is 1, or 100 for Soft-TIFA's 0–1 scores shown 0–100."""
    m = record.metric(key)
    mean = float(np.mean(m.per_prompt)) if m is not None and m.per_prompt else 0.0
    return 100.0 if mean and abs(100 * mean - m.value) < abs(mean - m.value) else 1.0
