"""The diffusers adapters (sd35, flux1-dev, flux2-klein) on tiny random pipelines.

Each pipeline is built from configs in code (tests/tiny_pipelines.py), pipeline_dirs, and loaded
back through `models.load_model` by directory, the path real checkpoints take.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from flowarena.methods.sde import sd3_sigmas, shift_sigmas
from flowarena.models import ModelError, load_model
from flowarena.models.diffusers_flow import FluxModel
from tests.tiny_pipelines import RESOLUTION

NAMES = ("sd35", "flux1-dev", "flux2-klein")
PROMPTS = ["a red circle", "two blue squares left of a green triangle"]
GUIDANCE = {"sd35": 4.5, "flux1-dev": 3.5, "flux2-klein": 4.0}  # CFG, guidance embedding, CFG
TOKENS = 32  # text sequence length (the pipelines pad to 256 / 512): keeps the file fast


pytestmark = pytest.mark.usefixtures("offline_single_thread")


@pytest.fixture(scope="module")
def models(pipeline_dirs):
    return {name: load_model(name, str(pipeline_dirs[name]), resolution=RESOLUTION,
                             max_sequence_length=TOKENS) for name in NAMES}


def _noise(model, n=2, seed=0):
    return model.initial_noise(n, torch.Generator().manual_seed(seed))


def _pipeline_latents(name, model, noise):
    """The same initial noise in the layout the pipeline takes (FLUX.1 packs it)."""
    if name == "flux1-dev":
        B, C, h, w = noise.shape
        return model.pipe._pack_latents(noise, B, C, h, w)
    return noise


@pytest.mark.parametrize("name", NAMES)
def test_velocity_shape_and_finite(models, name):
    m = models[name]
    x = _noise(m)
    assert x.shape[1:] == m.latent_shape
    for g in (1.0, GUIDANCE[name]):
        v = m.velocity(x, torch.tensor([0.9, 0.3]), m.encode_prompts(PROMPTS, g), g)
        assert v.shape == x.shape and v.dtype == torch.float32
        assert torch.isfinite(v).all()


@pytest.mark.parametrize("name,guidance", [("sd35", 4.5), ("sd35", 1.0), ("flux1-dev", 3.5),
                                           ("flux2-klein", 4.0)])
def test_ode_sampler_matches_the_pipeline(models, name, guidance):
    """FlowModel.generate (our Euler ODE loop, σ schedule, timesteps, CFG, decode) against
    the diffusers pipeline's own sampling loop from the same noise."""
    m, steps = models[name], 4
    noise = _noise(m, seed=1)
    ours = m.generate(PROMPTS, steps=steps, guidance=guidance, noise=noise)
    theirs = m.pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                    latents=_pipeline_latents(name, m, noise), height=RESOLUTION, width=RESOLUTION,
                    max_sequence_length=TOKENS, output_type="pt").images
    # the schedule is the scheduler's, value for value
    assert torch.equal(m.sigmas(steps).float(), m.pipe.scheduler.sigmas.cpu())
    assert ours.shape == theirs.shape == (2, 3, RESOLUTION, RESOLUTION)
    assert theirs.std() > 0.05  # the images are not flat, so the comparison means something
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # and the comparison is sensitive: another step count gives another image
    assert (m.generate(PROMPTS, steps=steps + 1, guidance=guidance, noise=noise) - theirs).abs().max() > 1e-3


def test_shift_option_gives_the_static_shift(models):
    """For FLUX's dynamic shifting, shift s means mu = log s: the SD3 formula on FLUX's spacing."""
    m = FluxModel(models["flux1-dev"].pipe, resolution=RESOLUTION, shift=3.0)
    base = torch.tensor(np.linspace(1.0, 1 / 6, 6), dtype=torch.float64)
    expected = torch.cat([shift_sigmas(base, 3.0), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(m.sigmas(6), expected, atol=1e-6, rtol=0)
    assert m.shift == 3.0
    # SD3's static schedule: the adapter's shift and sigma_min describe the scheduler's σ
    sd3 = models["sd35"]
    assert sd3.shift == 3.0
    torch.testing.assert_close(sd3_sigmas(10, sd3.shift, sd3.sigma_min), sd3.sigmas(10), atol=1e-6, rtol=0)


@torch.no_grad()
def test_max_batch_splits_without_changing_results(models):
    m = models["sd35"]
    small = type(m)(m.pipe, resolution=RESOLUTION, max_sequence_length=TOKENS, max_batch=1)
    x, s = _noise(m, n=3), torch.tensor([0.9, 0.5, 0.2])
    embeds = m.encode_prompts(PROMPTS + ["a cyan diamond"], 4.5)
    torch.testing.assert_close(small.velocity(x, s, embeds, 4.5), m.velocity(x, s, embeds, 4.5))
    torch.testing.assert_close(small.decode(x), m.decode(x))


@pytest.mark.parametrize("name", NAMES)
def test_offloaded_text_encoders_and_cached_embeddings_give_the_same_velocities(pipeline_dirs, models, name):
    m = models[name]
    off = load_model(name, str(pipeline_dirs[name]), resolution=RESOLUTION, max_sequence_length=TOKENS)
    encoders = off.text_encoders()
    assert len(encoders) == {"sd35": 3, "flux1-dev": 2, "flux2-klein": 1}[name]
    off.offload_text_encoders(cache_bytes=2**26)
    g, x, s = GUIDANCE[name], _noise(m, n=3), torch.tensor([0.9, 0.5, 0.2])
    batch = [PROMPTS[1], "a cyan diamond", PROMPTS[0]]
    off.embed(PROMPTS, g)  # two of the three are cached from another batch
    cached = off.embed(batch, g)
    assert off.prompt_cache.hits == 2
    assert all(p.device.type == "cpu" for e in encoders for p in e.parameters())
    torch.testing.assert_close(off.velocity(x, s, cached, g), m.velocity(x, s, m.encode_prompts(batch, g), g),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_lora_training_and_reference(pipeline_dirs, name):
    m = load_model(name, str(pipeline_dirs[name]), resolution=RESOLUTION, max_sequence_length=TOKENS,
                   gradient_checkpointing=True)
    g = GUIDANCE[name]
    x, s = _noise(m), torch.tensor([0.8, 0.5])
    embeds = m.encode_prompts(PROMPTS, g)
    v_base = m.velocity(x, s, embeds, g)

    params = m.setup_training(lora_rank=4)
    net = m.get_denoiser()
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(params) == len(trainable) and all(p.dtype == torch.float32 for p in params)
    adapted = {n.split(".lora_")[0] for n in trainable}
    for target in m.lora_targets:  # every recipe target exists in the network and got an adapter
        assert any(a == target or a.endswith("." + target) for a in adapted), target
    for module in m.pipe.components.values():
        if isinstance(module, torch.nn.Module) and module is not net:
            assert not any(p.requires_grad for p in module.parameters())

    with torch.no_grad():  # a LoRA B of zero is the base model: move it
        for n, p in trainable.items():
            if "lora_B" in n:
                p.normal_(std=0.05)
    v_lora = m.velocity(x, s, embeds, g)
    assert (v_lora - v_base).abs().max() > 1e-4
    with m.reference():
        torch.testing.assert_close(m.velocity(x, s, embeds, g), v_base, atol=1e-6, rtol=0)

    loss = m.velocity(x, s, embeds, g).square().mean()  # gradient checkpointing on
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_bf16_autocast_path(pipeline_dirs, models):
    """The CUDA setting (bf16 weights under autocast, fp32 velocity and LoRA weights), on the CPU."""
    m = load_model("sd35", str(pipeline_dirs["sd35"]), resolution=RESOLUTION, max_sequence_length=TOKENS,
                   dtype=torch.bfloat16)
    ref = models["sd35"]
    x, s = _noise(m), torch.tensor([0.8, 0.4])
    v = m.velocity(x, s, m.encode_prompts(PROMPTS, 4.5), 4.5)
    v32 = ref.velocity(x, s, ref.encode_prompts(PROMPTS, 4.5), 4.5)
    assert m.dtype == torch.bfloat16 and v.dtype == torch.float32
    assert (v - v32).abs().max() < 0.05 * v32.abs().max()
    params = m.setup_training(lora_rank=4)
    assert all(p.dtype == torch.float32 for p in params)
    m.velocity(x, s, m.encode_prompts(PROMPTS, 1.0), 1.0).square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_fp32_weights_compute_in_bf16_except_in_fp32_steps(pipeline_dirs, models):
    """`trained_precision = "fp32"`: fp32 weights (the run's model option, a dtype name) that
    compute in bf16 under autocast, and in fp32 inside `precision(float32)`, as the fp32 model."""
    from flowarena.methods import build_method
    from flowarena.methods.trainer import TrainConfig, TrainConfigError, Trainer
    from flowarena.rewards import build_reward

    m = load_model("sd35", str(pipeline_dirs["sd35"]), resolution=RESOLUTION, max_sequence_length=TOKENS,
                   dtype="float32", compute_dtype="bfloat16")
    ref = models["sd35"]
    x, s, e = _noise(m), torch.tensor([0.8, 0.4]), ref.encode_prompts(PROMPTS, 1.0)
    v32 = ref.velocity(x, s, e)
    assert m.weights_dtype == torch.float32 and not torch.equal(m.velocity(x, s, e), v32)
    with m.precision(torch.float32):
        torch.testing.assert_close(m.velocity(x, s, e), v32, rtol=0, atol=0)
    half = load_model("sd35", str(pipeline_dirs["sd35"]), resolution=RESOLUTION, max_sequence_length=TOKENS,
                      dtype="bfloat16")
    with pytest.raises(TrainConfigError, match="weights in fp32"):
        Trainer(half, build_method("dppo"), build_reward("toy-colour"), [{"prompt": p} for p in PROMPTS],
                TrainConfig(prompts_per_epoch=2, trained_precision="fp32"))
    with pytest.raises(ModelError, match="unknown dtype 'fp8'"):
        load_model("sd35", str(pipeline_dirs["sd35"]), dtype="fp8")


def test_missing_weights_are_one_line_model_errors(pipeline_dirs, tmp_path):
    with pytest.raises(ModelError) as e:
        load_model("sd35", str(tmp_path / "no-such-dir"))
    assert "not found" in str(e.value) and "\n" not in str(e.value)

    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dirs["flux1-dev"], broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelError) as e:
        load_model("flux1-dev", str(broken))
    assert "\n" not in str(e.value)

    with pytest.raises(ModelError) as e:  # another family's pipeline would load with mismatched parts
        load_model("sd35", str(pipeline_dirs["flux1-dev"]))
    assert "FluxPipeline" in str(e.value) and "'flux1-dev'" in str(e.value)

    with pytest.raises(ModelError) as e:  # a hub id that is not cached, offline
        load_model("flux2-klein", "flowarena-tests/not-a-model")
    assert "HF_HUB_OFFLINE" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_exported_lora_loads_into_a_fresh_diffusers_pipeline(pipeline_dirs, name, tmp_path):
    """`export` writes what `pipe.load_lora_weights` takes: a fresh pipeline of the family,
    loaded from the same directory, then samples what our policy samples, and not the base."""
    from diffusers import DiffusionPipeline

    m = load_model(name, str(pipeline_dirs[name]), resolution=RESOLUTION, max_sequence_length=TOKENS)
    params = m.setup_training(lora_rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in m.get_denoiser().named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    assert params
    path = m.export(tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left behind

    fresh = DiffusionPipeline.from_pretrained(str(pipeline_dirs[name]), dtype=torch.float32)
    g, steps, noise = GUIDANCE[name], 3, _noise(m, seed=2)
    kwargs = dict(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=g, height=RESOLUTION,
                  width=RESOLUTION, max_sequence_length=TOKENS, output_type="pt")
    base = fresh(latents=_pipeline_latents(name, m, noise), **kwargs).images
    fresh.load_lora_weights(str(path.parent))
    tuned = fresh(latents=_pipeline_latents(name, m, noise), **kwargs).images
    ours = m.generate(PROMPTS, steps=steps, guidance=g, noise=noise)
    assert (tuned - base).abs().max() > 1e-3  # the LoRA changes the output for the same seed
    torch.testing.assert_close(tuned, ours, atol=1e-4, rtol=0)  # and it is our fine-tuned policy


def test_a_resolution_off_the_latent_grid_is_a_model_error(pipeline_dirs):
    step = 2 * 2  # the tiny VAE downsamples by 2, then 2 x 2 patches
    with pytest.raises(ModelError, match=f"resolution 34 must be a positive multiple of {step} pixels"):
        load_model("sd35", str(pipeline_dirs["sd35"]), resolution=34)


def test_export_without_an_adapter_is_a_model_error(models, tmp_path):
    with pytest.raises(ModelError, match="only a LoRA"):
        models["sd35"].export(tmp_path / "x")


RECIPES = {"sd35": "sd35-geneval2", "flux1-dev": "flux1-dev-geneval2", "flux2-klein": "flux2-klein-geneval2"}
# the recipe scaled down with the size knobs, as a user tries it before a GPU run
KNOBS = ["--epochs", "2", "--prompts-per-epoch", "2", "--group-size", "2", "--steps", "6",
         "--eval-steps", "6", "--eval-limit", "8", "--eval-ood-limit", "4", "--eval-final-limit", "8",
         "--resolution", str(RESOLUTION), "--methods", "grpo,dppo"]


@pytest.mark.parametrize("name", NAMES)
def test_the_published_recipe_end_to_end_on_a_saved_pipeline(pipeline_dirs, scorer_dirs, name, tmp_path,
                                                              monkeypatch):
    """`bench run --model NAME --model-path DIR --preset <its recipe> --judge DIR --pickscore DIR`
    scaled down: GenEval2-template training prompts and the geneval2 reward, GenEval2 (val
    split) and PickScore between epochs, both on their test sets at the end, the KL, the
    table and the report; then `bench export` and `bench eval --run` / `--lora` of the result."""
    import json

    from typer.testing import CliRunner

    from flowarena.harness.cli import app

    out = tmp_path / "run"
    judge, pick = str(scorer_dirs["judge"]), str(scorer_dirs["pickscore"])
    recipe = tmp_path / "recipe.toml"  # the EMA averaging every step: 2 updates move what is evaluated
    recipe.write_text(f'base = "{RECIPES[name]}"\n[train]\nema_every = 1\n')
    r = CliRunner().invoke(app, ["run", "--model", name, "--model-path", str(pipeline_dirs[name]), "--config",
                                 str(recipe), "--judge", judge, "--pickscore", pick, *KNOBS,
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    resolved = manifest["config"]["resolved"]
    assert resolved["train_prompts"] == "geneval2-train" and resolved["reward"] == "geneval2"
    assert resolved["eval"]["benchmarks"] == ["geneval2", "pickscore"]
    assert manifest["config"]["model_options"] == {"resolution": RESOLUTION}
    base = json.loads((out / name / "base" / "seed0" / "final.json").read_text())
    for method in ("grpo", "dppo"):
        cell = out / name / method / "seed0"
        config = json.loads((cell / "config.json").read_text())
        assert config["train"]["lora_rank"] == (32 if name == "sd35" else 64)  # the recipe's LoRA
        assert config["train"]["guidance"] == (3.5 if name == "flux1-dev" else 1.0)  # FLUX.1's distilled
        between = json.loads((cell / "eval" / "2.json").read_text())["benchmarks"]
        assert between["geneval2"]["split"] == "val" and between["geneval2"]["soft_tifa"]["n_prompts"] == 8
        assert between["pickscore"]["pickscore"]["n"] == 4
        atoms = {int(k) for k in between["geneval2"]["soft_tifa"]["per_atom_count"]}
        assert len(atoms) == 8  # 8 val prompts spread over atom counts 3…10
        result = json.loads((cell / "result.json").read_text())
        final = result["final"]["benchmarks"]
        assert final["geneval2"]["split"] == "test" and final["pickscore"]["pickscore"]["n"] == 8
        assert result["base"]["benchmarks"] == base["benchmarks"]  # paired with the base on the test prompts
        kl = result["final"]["kl_to_pretrained"]["mean"]
        assert np.isfinite(kl) and kl > 0  # the LoRA moved the policy away from the pipeline's
    table = (out / "report" / "tables.md").read_text()
    for column in ("Soft-TIFA GM", "ΔGM vs base", "GM @3 atoms", "PickScore", "KL to pretrained"):
        assert column in table
    assert "geneval2 test (8 prompts), pickscore test (8 prompts)" in table
    from flowarena.reports.figures.curves import learning_curves
    from flowarena.reports.run_reader import load_run

    titles = [ax.get_title() for ax in learning_curves(load_run(out), name).axes]
    assert "Held-out Soft-TIFA GM" in titles and "Held-out PickScore" in titles
    assert (out / "report" / "index.html").exists() and "| dppo " in r.output and "Δ vs grpo" in r.output
    assert f"| {name} " in (out / "report" / "tables.md").read_text()

    cell = out / name / "dppo" / "seed0"
    import flowarena.harness.run.export as export

    def no_pipeline(*args, **kwargs):
        raise AssertionError("bench export loaded the pipeline")
    monkeypatch.setattr(export, "load_model", no_pipeline)  # the LoRA comes from the checkpoint alone
    r = CliRunner().invoke(app, ["export", str(cell), "--out", str(tmp_path / "lora")])
    assert r.exit_code == 0, r.output
    monkeypatch.undo()  # bench eval --run loads it
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    scored = {}
    pipeline = ["--model", name, "--model-path", str(pipeline_dirs[name]), "--steps", "6",
                "--guidance", str(config["eval"]["guidance"]), "--resolution", str(RESOLUTION)]
    for how, args in (("run", ["--run", str(cell)]), ("lora", [*pipeline, "--lora", str(tmp_path / "lora")]),
                      ("base", pipeline)):
        path = tmp_path / f"{how}.json"
        r = CliRunner().invoke(app, ["eval", *args, "--benchmark", "geneval2", "--judge", judge,
                                     "--limit", "4", "--json", str(path)])
        assert r.exit_code == 0, r.output
        scored[how] = json.loads(path.read_text())["soft_tifa"]["per_prompt_gm"]
    assert scored["run"] == pytest.approx(scored["lora"], abs=1e-6)  # the exported LoRA is the policy
    assert scored["run"] != scored["base"]
