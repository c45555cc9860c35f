"""The toy benchmark's metrics, and the reader of the runs that held only them (result schema 1)."""

from __future__ import annotations

from dataclasses import asdict

from flowarena.core.results import Metric, upgrade
from flowarena.tasks.soft_tifa import soft_tifa_metrics


def toy_metrics(result: dict) -> list[Metric]:
    """Soft-TIFA on the eval split, the preference score on the ood prompts."""
    out = soft_tifa_metrics(result["soft_tifa"], "toy")
    if (p := result.get("preference_ood")) is not None:
        out.append(Metric("pref", "ood preference", p["mean"], p["stderr"], p["n"], digits=2,
                          role="secondary", benchmark="toy", log_name="preference_ood",
                          per_prompt=p.get("per_prompt")))
    return out


@upgrade(1)
def schema_1(d: dict) -> dict:
    """Schema 1 held the toy benchmark's result at the top level, beside the KL and the epoch."""
    kept = ("kl_to_pretrained", "epoch", "wall_seconds")
    toy = {k: v for k, v in d.items() if k not in kept}
    return {**{k: d[k] for k in kept if k in d}, "schema": 2, "benchmarks": {"toy": toy},
            "metrics": [asdict(m) for m in toy_metrics(toy)]}
