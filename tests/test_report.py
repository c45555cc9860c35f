"""bench report: tables, figures and index.html from a hand-written run directory, complete
and damaged. It is written in result schema 1 (copied from a real `bench run` before the
schema existed), so it also checks that old run directories still read."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from flowarena.core.io import save_tensors, write_json, write_jsonl
from flowarena.reports.figures import FIGURES
from flowarena.reports.report import build_report
from flowarena.reports.style import BASE_COLOUR, method_colours

SKILLS = ["object", "count", "attribute", "position"]
N_PROMPTS, EPOCHS, WINDOW, B, MB, INNER = 8, 8, [1, 2], 8, 4, 2
TRAIN = {"prompts_per_epoch": 2, "group_size": 4, "steps": 10, "sde_window": 2, "window_fraction": 0.5,
         "guidance": 1.0, "inner_loops": INNER, "minibatch_size": MB, "lr": 0.001, "adam_betas": [0.9, 0.999],
         "weight_decay": 0.0001, "grad_clip": 1.0, "beta": 0.0, "adv_std": "global", "adv_clip": 5.0,
         "group_noise": "shared", "lora_rank": 16, "lora_alpha": 32.0, "lora_targets": None}
EVAL = {"every": 8, "limit": N_PROMPTS, "ood_limit": 4, "steps": 10, "guidance": 1.0, "kl_prompts": 4,
        "samples": 2}
METHOD_CONFIG = {"grpo": {"sampler": "sde", "eta": 0.7, "log_prob": "exact", "clip_range": 1e-4},
                 "dppo": {"sampler": "sde", "eta": 0.7, "log_prob": "exact", "delta": 1e-5}}


def _eval(rng, gm: float, kl: float, epoch: int | None = None, wall: float | None = None) -> dict:
    per_gm = np.clip(rng.normal(gm, 0.2, N_PROMPTS), 0, 1)
    ev = {"model": "toy", "steps": 10, "guidance": 1.0, "seed": 1234,
          "soft_tifa": {"am": 100 * min(gm + 0.2, 1), "am_stderr": 2.0, "gm": 100 * per_gm.mean(),
                        "gm_stderr": 100 * per_gm.std(ddof=1) / N_PROMPTS**0.5,
                        "per_skill": {s: float(rng.uniform(20, 90)) for s in SKILLS},
                        "per_atom_count": {str(a): float(rng.uniform(20, 90)) for a in range(2, 8)},
                        "per_prompt_am": list(np.minimum(per_gm + 0.2, 1)), "per_prompt_gm": list(per_gm),
                        "n_prompts": N_PROMPTS, "n_images": N_PROMPTS},
          "preference_ood": {"mean": 17.0, "stderr": 0.3, "n": 4, "per_prompt": [17.0, 16.5, 17.5, 17.0]},
          "seconds": 3.1,
          "kl_to_pretrained": {"mean": kl, "stderr": kl / 5, "per_step": [kl / 10] * 10, "n": 4 if kl else 0,
                               "unit": "per-element KL summed over steps"}}
    if epoch is not None:
        ev["epoch"] = epoch
    if wall is not None:
        ev["wall_seconds"] = wall
    return ev


def _step_metrics(rng, k: int, tag: str, delta: bool) -> dict:
    kl = float(rng.uniform(1e-8, 1e-6))
    out = {f"{tag}ratio_mean": 1 - kl, f"{tag}ratio_std": 1e-5, f"{tag}ratio_min": 0.99997,
           f"{tag}ratio_max": 1.00003, f"{tag}trust_frac": 0.02, f"{tag}trust_frac_pos_adv": 0.01,
           f"{tag}trust_frac_neg_adv": 0.03, f"{tag}kl_mean": kl, f"{tag}kl_max": 3 * kl,
           f"{tag}logratio_signal": -kl, f"{tag}logratio_noise_std": 1e-5}
    if delta:
        out[f"{tag}kl_above_delta"] = 0.01
    return out


def _diagnostics(rng) -> dict[str, torch.Tensor]:
    """One entry per trajectory per trained step per pass; the first mini-batch of the first pass
    is on-policy (ρ = 1, KL = 0), as in the trainer."""
    cols = {k: [] for k in ("ratio", "kl", "adv", "noise", "step", "inner")}
    for inner in range(INNER):
        for mb in range(B // MB):
            for k in WINDOW:
                on_policy = inner == 0 and mb == 0
                kl = np.zeros(MB) if on_policy else rng.uniform(1e-8, 1e-6, MB) * (inner + 1)
                noise = np.zeros(MB) if on_policy else rng.normal(0, 1e-5 * (k + 1), MB)
                for name, v in (("ratio", np.exp(-kl + noise)), ("kl", kl), ("adv", rng.normal(0, 1, MB)),
                                ("noise", noise), ("step", np.full(MB, k)), ("inner", np.full(MB, inner))):
                    cols[name].append(v)
    return {k: torch.tensor(np.concatenate(v), dtype=torch.float32) for k, v in cols.items()}


def _png(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (34, 66, 3), dtype=np.uint8)
    Image.fromarray(arr).resize((264, 136), Image.NEAREST).save(path)


def make_run(root, methods=("grpo", "dppo"), seeds=(0,)):
    """A finished `bench run` directory in the real formats, small enough to render fast."""
    rng = np.random.default_rng(0)
    write_json(root / "manifest.json", {
        "command": "bench run --preset test", "status": "done", "started": "2026-11-26 08:24:16",
        "seconds": 60.0,
        "config": {"methods": list(methods), "model": "toy", "model_path": None, "seeds": len(seeds),
                   "preset": "test", "resolved": {"name": "test", "epochs": EPOCHS, "train": TRAIN,
                                                  "eval": EVAL, "reward": "toy-tifa"}},
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"}})
    for seed in seeds:
        base = _eval(rng, 0.5, 0.0)
        write_json(root / "toy" / "base" / f"seed{seed}" / "eval.json", base)
        _png(root / "toy" / "base" / f"seed{seed}" / "samples.png", 0)
        for i, method in enumerate(methods):
            cell = root / "toy" / method / f"seed{seed}"
            write_json(cell / "config.json", {"method": method, "method_config": METHOD_CONFIG[method],
                                              "train": TRAIN, "eval": EVAL, "epochs": EPOCHS,
                                              "reward": "toy-tifa", "seed": seed, "model": "toy"})
            rows, wall = [], 0.0
            for epoch in range(EPOCHS):
                wall += 10.0 + i
                row = {"loss": 1e-6, "grad_norm": 1e-4, "skipped_updates": 0}
                for k in WINDOW:
                    row |= _step_metrics(rng, k, f"k{k}/", method == "dppo")
                    row |= _step_metrics(rng, k, f"k{k}/i1/", method == "dppo")
                row |= {"epoch": epoch, "reward_mean": 0.4 + 0.01 * epoch + rng.normal(0, 0.02),
                        "reward_std": 0.3, "zero_spread_groups": 0.0, "adv_abs_mean": 0.5, "window": WINDOW,
                        "rollout_s": 4.0, "update_s": 6.0 + i, "wall_seconds": wall}
                rows.append(row)
                save_tensors(cell / "diagnostics" / f"epoch_{epoch + 1:04d}.safetensors", _diagnostics(rng))
            write_jsonl(cell / "metrics.jsonl", rows)
            write_json(cell / "eval" / "0.json", {**base, "epoch": 0})
            final = _eval(rng, 0.55 - 0.05 * i, 3e-3, EPOCHS, wall)
            write_json(cell / "eval" / f"{EPOCHS}.json", final)
            _png(cell / "samples" / "final.png", 1 + i)
            write_json(cell / "result.json", {
                "method": method, "seed": seed, "model": "toy", "epochs": EPOCHS, "wall_seconds": wall,
                "final": final, "base": base, "reward": "toy-tifa",
                "train_reward": {"first": rows[0]["reward_mean"], "first_stderr": 0.04,
                                 "last": rows[-1]["reward_mean"], "last_epochs": 3}})
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"), seeds=(0, 1))  # two seeds: the bands are drawn
    return run, build_report(run)


def test_report_has_the_table_and_every_figure(report):
    run, out = report
    assert out["missing"] == []
    assert [p.name for p in out["figures"]] == [f"toy_{name}.png" for name, _, _ in FIGURES]
    for path in out["figures"]:
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 200
    page = out["index"].read_text()
    assert out["index"] == run / "report" / "index.html"
    # two tables (headline scores; skills and atom counts), each: header, base, grpo, dppo; then
    # dppo against grpo, paired: header and GM, AM, ood preference, KL
    assert page.count("<table") == 3 and page.count("<tr") == 2 * (1 + 3) + 1 + 4
    headline, detail, paired = page.split("<table")[1:]
    assert "Method against grpo, paired" in page and "Soft-TIFA GM" in paired
    assert "Soft-TIFA GM" in headline and "GM @2 atoms" not in headline and "GM @2 atoms" in detail
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(out["figures"])
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert (run / "report" / "tables.md").exists() and (run / "report" / "tables.csv").exists()
    assert not list((run / "report" / "figures").glob(".*.tmp"))  # atomic writes leave no temp file


def test_missing_and_half_written_files_are_reported_not_fatal(tmp_path):
    run = make_run(tmp_path)
    (run / "toy/dppo/seed0/result.json").unlink()
    metrics = run / "toy/grpo/seed0/metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 200])  # the last line cut mid-write
    diag = run / "toy/grpo/seed0/diagnostics/epoch_0003.safetensors"
    diag.write_bytes(diag.read_bytes()[:50])
    (run / "toy/dppo/seed0/samples/final.png").unlink()

    out = build_report(run)

    missing = "\n".join(out["missing"])
    assert "toy/dppo/seed0/result.json: absent" in missing
    assert f"toy/grpo/seed0/metrics.jsonl line {EPOCHS}" in missing
    assert "toy/grpo/seed0/diagnostics/epoch_0003.safetensors: unreadable" in missing
    assert "toy/dppo/seed0/samples/final.png: absent" in missing
    # everything that has data still renders: all but the paired intervals (dppo has no result)
    assert len(out["figures"]) == len(FIGURES) - 1 and "figure toy_paired: no data yet" in missing
    page = out["index"].read_text()
    assert "<h2>Missing</h2>" in page and "toy/dppo/seed0/result.json" in page
    assert page.count("<tr") == 2 * (1 + 2)  # dppo is not finished: base and grpo only, in both tables


def test_a_run_without_results_renders_an_empty_report(tmp_path):
    write_json(tmp_path / "manifest.json", {"status": "running", "config": {}})
    out = build_report(tmp_path)
    assert out["figures"] == [] and out["index"].exists()
    assert "running" in out["index"].read_text()


def test_method_colours_are_stable_and_distinct():
    small, big = method_colours(["grpo"]), method_colours(["dppo", "grpo", "dppo@delta=3e-6", "my-method"])
    assert small["grpo"] == big["grpo"] and big["base"] == BASE_COLOUR
    trained = [big[m] for m in ("dppo", "grpo", "dppo@delta=3e-6", "my-method")]
    assert len(set(trained)) == 4 and BASE_COLOUR not in trained


def test_tables_mark_the_best_trained_method_in_markdown_latex_and_html(report):
    import pandas as pd

    from flowarena.reports.tables import best_methods, comparison, format_cell

    run, _ = report
    c = comparison(run)
    records, cols = c.records, c.columns
    assert [r["method"] for r in records] == ["base (pretrained)", "dppo", "grpo"]
    keys = [col.key for col in cols]
    assert [f"atoms:{a}" for a in range(2, 8)] == [k for k in keys if k.startswith("atoms:")]
    assert "wall_min" in keys and "kl" in keys
    best = best_methods(records, cols)
    by = {r["method"]: r for r in records}
    # higher is better for scores, lower for KL and wall time; the base model never wins
    assert best[("toy", "gm")] == max(("grpo", "dppo"), key=lambda m: by[m]["gm"])
    assert best[("toy", "wall_min")] == "grpo"  # make_run gives dppo 1 s more per epoch
    assert by["grpo"]["wall_min"] == pytest.approx(EPOCHS * 10 / 60)
    assert all(m != "base (pretrained)" for m in best.values())

    md = (run / "report" / "tables.md").read_text()
    assert "GM @7 atoms" in md and "train min" in md
    winner = best[("toy", "gm")]
    row = next(line for line in md.splitlines() if f"| {winner} " in line)
    assert f"**{format_cell(by[winner], 'gm', 1)}**" in row
    assert md.count("**") == 2 * len(best)

    tex = (run / "report" / "tables.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\toprule" in tex and "\\bottomrule" in tex
    body = tex[tex.index("\\midrule"):tex.index("\\bottomrule")]
    assert body.count("\\\\") == len(records) and tex.count("\\textbf{") == len(best)
    assert "$\\pm$" in tex and "±" not in tex and "_" not in body.replace("\\_", "")

    csv = pd.read_csv(run / "report" / "tables.csv")
    assert {"gm", "gm_stderr", "atoms:2", "wall_min", "delta_gm"} <= set(csv.columns)
    assert csv.set_index("method").loc["grpo", "gm"] == pytest.approx(by["grpo"]["gm"])

    page = (run / "report" / "index.html").read_text()
    assert page.count('class="best"') == len(best)


def test_identical_seeds_get_no_error_bar_but_small_real_ones_do():
    from flowarena.reports.tables import format_cell

    copies = {"gm": 46.3, "gm_stderr": 46.3 * 1e-15}  # the mean of three equal floats, off by an ulp
    assert format_cell(copies, "gm", 1) == "46.3"
    assert format_cell({"gm": 46.3, "gm_stderr": 0.04}, "gm", 1) == "46.3 ± 0.0"


def test_training_reward_running_mean_and_its_stderr():
    from flowarena.reports.figures.curves import running_mean

    mean, se = running_mean(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0]), 3)
    np.testing.assert_allclose(mean, [1.0, 1.5, 2.0, 3.0])
    np.testing.assert_allclose(se, [2.0, 2.0 / np.sqrt(2), 2.0 / np.sqrt(3), 2.0 / np.sqrt(3)])
