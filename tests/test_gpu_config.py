"""The real recipes in the configuration a GPU runs them in, on the CPU.

On CUDA a diffusers pipeline loads in bf16 and computes under bf16 autocast, while the LoRA
weights, their gradients and AdamW's state stay fp32 and log-probabilities float64. The
other real-model tests hold fp32 weights, a configuration no GPU run has, and so could not
see a dtype fault: a bf16 pipeline on the CPU crashed at the first off-policy mini-batch
(the rounding check's fp32 recomputation met the bf16 patch embedding). Here
`DiffusersFlowModel.default_dtypes` gives the CPU the GPU's answer, and each family's
published recipe, scaled down with the size knobs but keeping its batch structure (two
optimizer updates an epoch, the second off-policy; micro-batches; rollout batches in the
update's shape), runs through `bench run`, `bench export` and `bench eval --run`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from flowarena.harness.cli import app
from flowarena.models.diffusers_flow import DiffusersFlowModel
from tests.tiny_pipelines import RESOLUTION

NAMES = ("sd35", "flux1-dev", "flux2-klein")
RECIPES = {"sd35": "sd35-geneval2", "flux1-dev": "flux1-dev-geneval2", "flux2-klein": "flux2-klein-geneval2"}
# the recipe's structure at a tiny size: 8 rollouts an epoch, two mini-batches of 4 (the second
# off-policy), micro-batches of 2, sampled 2 at a time (the update's shape); the recipe's EMA of
# the LoRA weights averaged after every update
SCALED = """base = "{recipe}"
[train]
prompts_per_epoch = 2
group_size = 4
steps = 6
minibatch_size = 4
micro_batch = 2
rollout_batch = 2
ema_every = 1
[eval]
steps = 4
every = 1
limit = 4
ood_limit = 2
final_limit = 4
kl_prompts = 2
samples = 2
"""

pytestmark = pytest.mark.usefixtures("offline_single_thread")


@pytest.fixture
def gpu_dtypes(monkeypatch):
    """Every pipeline loads as on CUDA: bf16 weights computing under bf16 autocast."""
    monkeypatch.setattr(DiffusersFlowModel, "default_dtypes",
                        staticmethod(lambda device: (torch.bfloat16, torch.bfloat16)))


def _checkpoint(cell):
    ckpt = cell / "checkpoints" / "latest"
    state = json.loads((ckpt / "state.json").read_text())
    return [load_file(ckpt / state["files"][part]) for part in ("weights", "optimizer", "ema")]


@pytest.mark.parametrize("name", NAMES)
def test_the_recipe_runs_in_the_gpu_configuration(pipeline_dirs, scorer_dirs, gpu_dtypes, name, tmp_path):
    out, config = tmp_path / "run", tmp_path / "scaled.toml"
    config.write_text(SCALED.format(recipe=RECIPES[name]))
    scorer_args = ["--judge", str(scorer_dirs["judge"]), "--pickscore", str(scorer_dirs["pickscore"])]
    r = CliRunner().invoke(app, ["run", "--model", name, "--model-path", str(pipeline_dirs[name]), "--config",
                                 str(config), "--epochs", "2", "--resolution", str(RESOLUTION),
                                 "--methods", "grpo,dppo", *scorer_args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    for method in ("grpo", "dppo"):
        cell = out / name / method / "seed0"
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [0, 1]
        first = rows[0]
        # the noise floor: rolled out and recomputed in one batch shape, the same bf16 kernels
        assert first["floor_kl_mean"] == 0 and first["floor_logratio_abs_mean"] == 0
        # the rounding check ran on the off-policy mini-batch, in bf16 against fp32 arithmetic
        assert first["change_kl_mean_fp32"] > 0 and math.isfinite(first["rounding_kl_mean"])
        assert first["change_kl_mean"] != first["change_kl_mean_fp32"]  # bf16 rounding is visible
        assert all(math.isfinite(row["loss"]) and row["skipped_updates"] == 0 for row in rows)
        weights, optimizer, ema = _checkpoint(cell)
        assert weights and {t.dtype for t in weights.values()} == {torch.float32}  # fp32 LoRA
        assert ema.keys() == weights.keys() and {t.dtype for t in ema.values()} == {torch.float32}
        assert any(not torch.equal(ema[k], weights[k]) for k in weights)  # an average, not a copy
        moments = [t for k, t in optimizer.items() if t.dim() > 0]
        assert moments and {t.dtype for t in moments} == {torch.float32}  # fp32 AdamW state
        for when in ("1", "final"):  # measured by the bf16 policy (its EMA), which the record says
            record = json.loads((cell / "eval" / f"{when}.json").read_text())
            assert record["benchmarks"]["geneval2"]["precision"] == "bfloat16"
        assert record["kl_to_pretrained"]["mean"] > 0  # the evaluated (EMA) policy moved
    assert (out / "report" / "tables.md").is_file()

    cell = out / name / "dppo" / "seed0"
    r = CliRunner().invoke(app, ["export", str(cell), "--out", str(tmp_path / "lora")])
    assert r.exit_code == 0, r.output
    exported = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert exported and all(torch.isfinite(t).all() for t in exported.values())
    judge = str(scorer_dirs["judge"])
    r = CliRunner().invoke(app, ["eval", "--run", str(cell), "--benchmark", "geneval2", "--judge", judge,
                                 "--limit", "2", "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    scored = json.loads((tmp_path / "e.json").read_text())
    gm = scored["soft_tifa"]["per_prompt_gm"]
    assert len(gm) == 2 and all(0 <= g <= 1 for g in gm)


def test_fp32_over_bf16_weights_is_the_fp32_policy(pipeline_dirs):
    """`precision(float32)` on bf16 weights (the rounding check's reference) computes what fp32
    weights holding the same values compute, without keeping an fp32 copy, and leaves the
    bf16 weights as they were."""
    from flowarena.models import load_model

    half = load_model("sd35", str(pipeline_dirs["sd35"]), resolution=RESOLUTION, max_sequence_length=32,
                      dtype="bfloat16", compute_dtype="bfloat16")
    full = load_model("sd35", str(pipeline_dirs["sd35"]), resolution=RESOLUTION, max_sequence_length=32)
    net = half.get_denoiser()
    full.get_denoiser().load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = half.initial_noise(2, torch.Generator().manual_seed(0))
    s, embeds = torch.tensor([0.8, 0.4]), full.encode_prompts(["a red circle", "two blue squares"])
    with torch.no_grad():
        v_bf16 = half.velocity(x, s, embeds)
        with half.precision(torch.float32):
            v_over = half.velocity(x, s, embeds)
        v_fp32 = full.velocity(x, s, embeds)
    torch.testing.assert_close(v_over, v_fp32, rtol=0, atol=1e-6)
    assert (v_bf16 - v_fp32).abs().max() > 100 * (v_over - v_fp32).abs().max()  # bf16 rounding is gone
    after = net.state_dict()
    assert all(after[k].dtype == torch.bfloat16 and torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())  # nothing left behind


FLASH = "mixgrpo@post_compress=0.4@solver=dpm++2m"  # MixGRPO-Flash: fewer steps after the window


@pytest.mark.parametrize("recipe,methods", [("sd35-nft", "nft"), ("sd35-awm", "awm"), ("sd35-dgpo", "dgpo"),
                                            ("sd35-geneval2", f"mixgrpo,dance,{FLASH}")])
def test_the_newer_methods_run_their_recipes_in_the_gpu_configuration(pipeline_dirs, scorer_dirs, gpu_dtypes,
                                                                       recipe, methods, tmp_path):
    """Each method of the field's newer families, on the tiny SD3.5 pipeline as a GPU runs it
    (bf16 weights under autocast), from its own recipe scaled down."""
    out, config = tmp_path / "run", tmp_path / "scaled.toml"
    config.write_text(SCALED.format(recipe=recipe))
    scorer_args = ["--judge", str(scorer_dirs["judge"]), "--pickscore", str(scorer_dirs["pickscore"])]
    r = CliRunner().invoke(app, ["run", "--model", "sd35", "--model-path", str(pipeline_dirs["sd35"]),
                                 "--config", str(config), "--epochs", "1", "--resolution", str(RESOLUTION),
                                 "--methods", methods, *scorer_args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    spent = {}
    for method in methods.split(","):
        cell = out / "sd35" / method / "seed0"
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [0]
        assert all(math.isfinite(row["loss"]) and row["skipped_updates"] == 0 for row in rows)
        assert all(row["compute_fe"] > 0 for row in rows)
        spent[method] = rows[0]["nfe_forward"]
        weights, _, _ = _checkpoint(cell)
        assert {t.dtype for t in weights.values()} == {torch.float32}  # fp32 LoRA over bf16 weights
        record = json.loads((cell / "eval" / "final.json").read_text())
        assert record["benchmarks"]["geneval2"]["precision"] == "bfloat16"
        assert record["kl_to_pretrained"]["mean"] > 0  # the evaluated policy moved
    if FLASH in spent:  # the same window, fewer steps after it
        assert spent[FLASH] < spent["mixgrpo"]
