"""How many rows the toy UNet should see per call on this CPU (not a test).

The shipped toy model's no-grad forward over 128 rows (two prompts alternating, σ = 0.5)
cut into pieces of each size, the sizes alternated so that machine load hits all alike;
prints the median milliseconds per row, the ratio to the fastest size, and whether each
size gives the same bits as one call (rows do not interact, so only rounding could differ).
`models.toy.ROWS_PER_FORWARD` holds the chosen size (the rollout's batch is 64 rows, the
evaluation's 128 with CFG).

    python benchmarks/rows_per_forward.py [--threads 1] [--sizes 16,32,64,128] [--repeats 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowarena.models import load_model


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated row counts, not {text!r}") from None
    if not all(0 < s <= 128 for s in sizes):
        raise argparse.ArgumentTypeError(f"row counts between 1 and 128, not {text!r}")
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=_sizes, default="16,32,64,128")
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.sizes
    model, n = load_model("toy"), 128
    embeds = model.embed(["a red square", "two blue circles"] * (n // 2), 1.0)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((n,), 0.5)
    times: dict[int, list[float]] = {s: [] for s in sizes}
    outputs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for size in sizes:
                model.rows_per_forward = size
                t0 = time.perf_counter()
                outputs[size] = model.velocity(x, sigma, embeds)
                times[size].append(time.perf_counter() - t0)
        model.rows_per_forward = None
        whole = model.velocity(x, sigma, embeds)
    ms = {s: statistics.median(t) / n * 1e3 for s, t in times.items()}
    best = min(ms.values())
    print(f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    for s in sizes:
        same = "same bits" if torch.equal(outputs[s], whole) else \
            f"max |Δ| {(outputs[s] - whole).abs().max().item():.1e}"
        print(f"{s:>5} rows per call: {ms[s]:6.2f} ms a row, {ms[s] / best:.2f} of the fastest; {same}")


if __name__ == "__main__":
    main()
