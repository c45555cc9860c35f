"""The memory knobs change how the work is batched, not what is computed: a rollout in
batches draws the same trajectories, and an update in micro-batches accumulates the
mini-batch's gradient (to float tolerance)."""

from __future__ import annotations

import pytest
import torch

from flowarena.methods import build_method
from flowarena.methods.diagnostics import noise_floor
from flowarena.methods.trainer import TrainConfig, TrainConfigError, Trainer
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

CFG = TrainConfig(prompts_per_epoch=3, group_size=4, steps=6, sde_window=2, minibatch_size=12, beta=0.1)


def _trainer(tiny_path, method="dppo", **kw):
    from dataclasses import replace

    return Trainer(load_toy(tiny_path), build_method(method), build_reward("toy-colour"),
                   load_toy_split("train"), replace(CFG, **kw), seed=0)


def test_a_rollout_in_batches_draws_the_same_trajectories(tiny_path):
    whole, batched = _trainer(tiny_path).rollout(0), _trainer(tiny_path, rollout_batch=5).rollout(0)
    assert whole.window == batched.window
    for name in ("x", "x_next", "old_mean", "std", "old_log_prob"):
        for a, b in zip(getattr(whole, name), getattr(batched, name)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.images, batched.images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.rewards, batched.rewards)


@pytest.mark.parametrize("method", ["grpo", "guard", "dppo"])
def test_micro_batches_accumulate_the_mini_batch_gradient(tiny_path, method):
    grads, diags = [], []
    for micro in (None, 5):  # 12 trajectories in parts of 5, 5, 2
        tr = _trainer(tiny_path, method, micro_batch=micro)
        metrics, samples = tr.update(tr.rollout(0), 0)  # one mini-batch: the gradient stays in .grad
        grads.append(torch.cat([p.grad.flatten() for p in tr.params]))
        diags.append((metrics, samples))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    (m0, s0), (m1, s1) = diags
    assert m0["loss"] == pytest.approx(m1["loss"], abs=1e-7)  # ≈ 0 on policy: the ratio is 1
    for key in s0:  # the diagnostics see every trajectory once, in the same order
        torch.testing.assert_close(s0[key], s1[key], rtol=1e-4, atol=1e-7)


def test_memory_knobs_are_checked():
    for bad, msg in (({"micro_batch": 0}, "train.micro_batch must be an integer >= 1"),
                     ({"rollout_batch": 0}, "train.rollout_batch must be an integer >= 1")):
        with pytest.raises(TrainConfigError, match=msg):
            TrainConfig(**bad).validate()


def test_the_knobs_are_preset_fields_and_options():
    import sys

    from typer.testing import CliRunner

    from flowarena.harness.cli import app
    from flowarena.harness.run import PRESETS

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    r = CliRunner().invoke(app, ["run", "--preset", "smoke", "--micro-batch", "4", "--rollout-batch", "2",
                                 "--offload-text-encoders", "--dump-config"])
    assert r.exit_code == 0, r.output
    train = tomllib.loads(r.output)["train"]
    assert (train["micro_batch"], train["rollout_batch"], train["offload_text_encoders"]) == (4, 2, True)
    for p in PRESETS.values():  # the real recipes fit one 80 GB card by estimate; the toy needs none
        assert (p.train.micro_batch, p.train.rollout_batch) == ((None, None) if p.model == "toy" else (8, 8))
        assert p.train.offload_text_encoders is (p.model != "toy")


def test_gradient_checkpointing_gives_the_same_gradients(tiny_path):
    grads = []
    for checkpointing in (False, True):
        tr = _trainer(tiny_path, gradient_checkpointing=checkpointing)
        assert tr.model.get_denoiser().is_gradient_checkpointing is checkpointing
        tr.update(tr.rollout(0), 0)
        grads.append(torch.cat([p.grad.flatten() for p in tr.params]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("phase,target", [("rollout", "velocity"), ("decode", "decode"),
                                          ("update", "update")])
def test_out_of_memory_is_one_line_naming_the_phase_and_knob(tiny_path, monkeypatch, phase, target):
    from flowarena.methods.memory import OutOfMemory

    tr = _trainer(tiny_path)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tr if target == "update" else tr.model, target, oom)
    with pytest.raises(OutOfMemory, match=f"out of GPU memory in the {phase}: lower --"):
        tr.train_epoch(0)


def test_bench_run_out_of_memory_ends_in_one_line(tiny_path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flowarena.harness.cli import app
    from flowarena.methods.trainer import Trainer

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "_step_loss", oom)
    r = CliRunner().invoke(app, ["run", "--preset", "smoke", "--methods", "grpo", "--epochs", "1",
                                 "--model-path", tiny_path, "--out", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        "error: out of GPU memory in the update: lower --micro-batch or add --gradient-checkpointing")


def test_the_noise_floor_is_measured_before_the_first_update(tiny_path):
    """The same weights in the update's batch shape (12 at once, or micro-batches of 5, against
    the rollout's whole batch): on this CPU the floor is rounding-sized, far below any δ."""
    for micro in (None, 5):
        tr = _trainer(tiny_path, micro_batch=micro)
        ro = tr.rollout(0)
        floor = noise_floor(tr, ro)
        assert set(floor) == {"floor_logratio_abs_mean", "floor_logratio_abs_max", "floor_kl_mean",
                              "floor_kl_max"}
        assert 0 <= floor["floor_logratio_abs_mean"] <= floor["floor_logratio_abs_max"] < 1e-4
        assert 0 <= floor["floor_kl_mean"] <= floor["floor_kl_max"] < 1e-9
        assert noise_floor(tr, ro) == floor  # it changes no weight and draws no random number
    metrics, _ = tr.train_epoch(0)
    assert "floor_kl_mean" in metrics and "floor_kl_mean" not in tr.train_epoch(1)[0]


def test_a_noise_floor_near_the_threshold_is_one_warning_line():
    from flowarena.methods.diagnostics import floor_warning

    quiet = {"floor_logratio_abs_mean": 1e-9, "floor_kl_mean": 1e-12}
    assert floor_warning(quiet, {"ratio_clip": 1e-4}) is None
    assert floor_warning(quiet, {"kl_threshold": 1e-5}) is None
    loud = floor_warning({"floor_logratio_abs_mean": 2.5e-6, "floor_kl_mean": 4e-8}, {"kl_threshold": 1e-7})
    assert loud == ("the ratio's noise floor (KL(old ‖ new) 4e-08 with unchanged weights is 40% of "
                    "δ = 1e-07): "
                    "the trust region acts on rounding, not only on policy change "
                    '(train.trained_precision = "fp32" computes the trained steps in fp32)')
    assert "20% of ε = 1e-05" in floor_warning({"floor_logratio_abs_mean": 2e-6}, {"ratio_clip": 1e-5})
    both = floor_warning({"floor_kl_mean": 1e-12, "rounding_kl_mean": 4e-8}, {"kl_threshold": 1e-7})
    assert "KL(old ‖ new) 4e-08 added by rounding to a change is 40% of δ" in both and "unchanged" not in both
    assert floor_warning({}, {"ratio_clip": 1e-5}) is None  # resumed past epoch 0: nothing measured


def test_the_reward_device_is_checked_and_carries_the_scorers(tiny_path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flowarena.harness.cli import app
    from flowarena.harness.run import cell

    r = CliRunner().invoke(app, ["run", "--preset", "smoke", "--reward-device", "cuda:7"])
    assert r.exit_code == 1 and "no CUDA GPU is visible" in r.output.strip().splitlines()[-1]
    seen = []

    class Stop(Exception):
        pass

    def build(spec, device, *a, **k):  # the reward of every cell is built on the evaluation's device
        seen.append(device)
        raise Stop

    monkeypatch.setattr(cell, "build_rewards", build)
    from flowarena.harness.run import plan, run_experiment

    with pytest.raises(Stop):
        run_experiment(plan(tmp_path / "r", ["grpo"], "toy", "smoke", 1, tiny_path, reward_device="cpu",
                            epochs=1),
                       progress=False)
    assert seen == ["cpu"]


def test_cached_prompt_embeddings_give_the_same_velocities(tiny_path):
    model, cached = load_toy(tiny_path), load_toy(tiny_path)
    cached.offload_text_encoders(cache_bytes=2**20)
    calls = []
    encode = cached.encode_prompts
    cached.encode_prompts = lambda ps, guidance=1.0: calls.append(list(ps)) or encode(ps, guidance)
    first, second = ["a red circle", "a blue square"], ["a blue square", "a green triangle", "a red circle"]
    x, s = torch.randn(3, *model.latent_shape), torch.tensor([0.9, 0.5, 0.2])
    for g in (1.0, 3.0):
        cached.embed(first, g)
        for a, b in zip(model.encode_prompts(second, g).cond.values(), cached.embed(second, g).cond.values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        v = model.velocity(x, s, model.encode_prompts(second, g), g)
        torch.testing.assert_close(cached.velocity(x, s, cached.embed(second, g), g), v, rtol=1e-5, atol=1e-6)
    # each prompt is encoded once per CFG setting: the second batch encodes only its new prompt
    assert calls == [first, ["a green triangle"], first, ["a green triangle"]]
    assert cached.prompt_cache.hits == 10 and len(cached.prompt_cache) == 6  # (2 + 3) a setting


def test_the_prompt_cache_is_bounded_least_recently_used_out(tiny_path):
    model = load_toy(tiny_path)
    row = model.embed(["a red circle"]).nbytes
    model.offload_text_encoders(cache_bytes=2 * row)
    model.embed(["a red circle", "a blue square"])
    model.embed(["a red circle"])  # now the most recently used
    model.embed(["a green triangle"])  # over the bound: the blue square leaves
    keys = {p for p, _ in model.prompt_cache._rows}
    assert keys == {"a red circle", "a green triangle"} and model.prompt_cache.bytes == 2 * row
    nothing = load_toy(tiny_path)
    nothing.offload_text_encoders(cache_bytes=0)  # 0: encode every time, still correct
    torch.testing.assert_close(nothing.embed(["a red circle"]).cond["tokens"],
                               model.embed(["a red circle"]).cond["tokens"])
    assert len(nothing.prompt_cache) == 0


def test_offloaded_text_encoders_train_the_same(tiny_path):
    a, b = _trainer(tiny_path), _trainer(tiny_path, offload_text_encoders=True, prompt_cache_gb=0.01)
    assert b.model.prompt_cache is not None and a.model.prompt_cache is None
    for tr in (a, b):
        tr.update(tr.rollout(0), 0)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in a.params]),
                               torch.cat([p.grad.flatten() for p in b.params]), rtol=1e-5, atol=1e-7)
    with pytest.raises(TrainConfigError, match="train.prompt_cache_gb must be a finite number >= 0"):
        TrainConfig(prompt_cache_gb=-1).validate()


def _bf16_trainer(tiny_path, **kw):
    tr = _trainer(tiny_path, minibatch_size=6, lr=1e-4, **kw)  # 2 mini-batches: the second is off-policy
    tr.model.compute_dtype = torch.bfloat16  # the run's precision on a GPU, under CPU autocast here
    return tr


def test_the_rounding_in_a_change_is_measured_on_the_first_off_policy_mini_batch(tiny_path):
    """The same change in the run's precision and in fp32: apart by fp32's rounding only (0 on
    an AVX-512 CPU, 4e-14 on an AVX2 one, whose kernels depend on the batch's shape); in bf16
    the rounding, not the change, sets the KL (measured: 2.7e-7 against 7.8e-9 in fp32), and
    the warning names it; fp32 trained steps remove it while the other steps stay in bf16."""
    from flowarena.methods.diagnostics import floor_warning

    fp32 = _trainer(tiny_path, minibatch_size=6, lr=1e-4).train_epoch(0)[0]
    negligible = 1e-4 * fp32["change_kl_mean_fp32"]
    assert fp32["rounding_kl_mean"] <= negligible and fp32["rounding_logratio_abs_mean"] <= 1e-8
    assert fp32["change_kl_mean_fp32"] > 1e-10
    assert fp32["change_kl_mean"] == pytest.approx(fp32["change_kl_mean_fp32"], rel=1e-4)
    bf16 = _bf16_trainer(tiny_path).train_epoch(0)[0]
    assert bf16["rounding_kl_mean"] > 10 * bf16["change_kl_mean_fp32"]
    assert bf16["change_kl_mean_fp32"] == pytest.approx(fp32["change_kl_mean_fp32"], rel=0.2)
    assert "added by rounding to a change" in floor_warning(bf16, {"kl_threshold": 1e-6})
    assert floor_warning(fp32, {"kl_threshold": 1e-6}) is None
    tr = _bf16_trainer(tiny_path, trained_precision="fp32")
    ro = tr.rollout(0)
    trained = tr.train_epoch(0)[0]
    assert trained["rounding_kl_mean"] <= negligible and trained["floor_kl_mean"] <= negligible
    assert tr.model.compute_dtype == torch.bfloat16  # the ODE steps and the decode stay in bf16
    plain = _trainer(tiny_path, minibatch_size=6).rollout(0)
    assert not torch.equal(ro.images, plain.images)  # ... so the images are bf16's
    whole = _trainer(tiny_path).train_epoch(0)[0]  # one mini-batch a batch: nothing off-policy
    assert not any(k.startswith(("rounding", "change")) for k in whole)


def test_a_bf16_rollout_against_an_fp32_update_shows_the_floor(tiny_path):
    """Where the rollout and the update compute differently, the same-weights floor is not 0."""
    from flowarena.methods.diagnostics import floor_warning

    tr = _bf16_trainer(tiny_path)
    ro = tr.rollout(0)
    assert noise_floor(tr, ro)["floor_kl_mean"] == 0  # bf16 against bf16: alike on this CPU
    with tr.model.precision(torch.float32):
        floor = noise_floor(tr, ro)
    assert floor["floor_kl_mean"] > 1e-9 and floor["floor_logratio_abs_mean"] > 1e-7
    assert "with unchanged weights" in floor_warning(floor, {"kl_threshold": floor["floor_kl_mean"]})


def test_fp32_trained_steps_need_fp32_weights(tiny_path, monkeypatch):
    from flowarena.models.toy import ToyModel

    monkeypatch.setattr(ToyModel, "weights_dtype", property(lambda self: torch.bfloat16))
    with pytest.raises(TrainConfigError, match="fp32 trained steps need the denoiser's weights in fp32"):
        _trainer(tiny_path, trained_precision="fp32")
    with pytest.raises(TrainConfigError, match="trained_precision"):
        TrainConfig(trained_precision="fp16").validate()


def test_each_phase_records_its_peak_memory_per_device_and_cell(monkeypatch, tiny_path):
    """The peak counters restart at each phase; an enclosing phase keeps its own peak and its
    inner phases'; each device counts apart (the reward models on cuda:1); a new cell's trainer
    starts afresh. CUDA's counters are simulated: allocations are a list of sizes per device."""
    import flowarena.methods.memory as memory

    now, peak = [0, 0], [0, 0]

    def alloc(gb, device=0):
        now[device] += gb * 2**30
        peak[device] = max(peak[device], now[device])

    def reset(device):
        peak[device] = now[device]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: peak[device])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    alloc(10)  # resident weights
    alloc(18, device=1)  # the judge and PickScore on a card of their own
    meter = memory.MemoryMeter()
    with meter.phase("rollout"):
        alloc(30)
        alloc(-30)  # the rollout's 40 GB peak, gone before the decode
        with meter.phase("decode"):
            alloc(5)
            alloc(-5)
        with meter.phase("reward"):
            alloc(6, device=1)
            alloc(-6, device=1)
    with meter.phase("update"):
        alloc(20)
        alloc(-20)
    assert meter.peaks == {"rollout": {"cuda:0": 40.0, "cuda:1": 24.0},
                           "decode": {"cuda:0": 15.0, "cuda:1": 18.0},
                           "reward": {"cuda:0": 10.0, "cuda:1": 24.0},
                           "update": {"cuda:0": 30.0, "cuda:1": 18.0}}
    assert meter.metrics()["peak_gb/reward/cuda:1"] == 24.0
    fresh = _trainer(tiny_path).memory  # the next cell: none of this cell's peaks
    assert fresh.peaks == {} and fresh.metrics() == {}


def test_the_prepared_gpu_check_runs_its_whole_path_small(tmp_path):
    """benchmarks/gpu_smoke.py on the tiny pipeline and the CPU: the same stages as on a GPU
    (build, `bench run` of the scaled recipe, the bare forward + backward, fp32 trained steps)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    args = [sys.executable, str(script), "--out", str(tmp_path), "--size", "tiny", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert len(result["epochs"]) == 2 and result["seconds_per_epoch"] > 0
    assert result["rollout_images_per_s"] > 0
    assert result["update_over_bare"] > 0 and result["peak_memory_gb"] == {}  # no CUDA here
    assert {"rollout", "update", "evaluation"} <= set(result["planned_gb"])  # the plan, to compare on a GPU
    assert {"floor_kl_mean", "rounding_kl_mean", "change_kl_mean_fp32"} <= set(result["noise_floor"])
    fp32 = result["trained_fp32"]
    assert fp32["rounding_kl_mean"] == 0 and fp32["seconds_per_epoch"] > 0


def test_bf16_ode_steps_leave_the_ratio_exact(tiny_path):
    """`ode_precision = "bf16"`: the untrained ODE steps run under bf16 autocast, the trained
    steps do not, so the first mini-batch is still exactly on-policy while the images change."""
    fast, plain = _trainer(tiny_path, ode_precision="bf16"), _trainer(tiny_path)
    ro, ref = fast.rollout(0), plain.rollout(0)
    assert not torch.equal(ro.images, ref.images)
    torch.testing.assert_close(ro.images, ref.images, atol=0.05, rtol=0)  # bf16 rounding, not a new sample
    floor = noise_floor(fast, ro)
    assert floor["floor_kl_mean"] == 0 and floor["floor_logratio_abs_mean"] == 0
    assert fast.model.compute_dtype == torch.float32  # only inside those steps
    with pytest.raises(TrainConfigError, match="ode_precision"):
        TrainConfig(ode_precision="fp16").validate()


def test_bf16_evaluation_images_keep_the_kl_in_the_model_precision(tiny_path):
    from dataclasses import replace

    from flowarena.harness.run import EvalSettings, Evaluation, RunError

    settings = EvalSettings(every=1, limit=8, ood_limit=4, steps=3, kl_prompts=2, samples=2)
    model, method = load_toy(tiny_path), build_method("dppo")
    model.setup_training(4, 8.0)
    plain = Evaluation(settings)(model, method, CFG)
    fast = Evaluation(replace(settings, precision="bf16"))(model, method, CFG)
    assert fast.kl_to_pretrained == plain.kl_to_pretrained
    a, b = plain.metric("gm"), fast.metric("gm")
    assert a.per_prompt != b.per_prompt and abs(a.value - b.value) < a.stderr
    with pytest.raises(RunError, match="eval.precision"):
        Evaluation(replace(settings, precision="fp8"))
    assert {r["precision"] for r in plain.benchmarks.values()} == {"float32"}
    assert {r["precision"] for r in fast.benchmarks.values()} == {"bfloat16"}


@pytest.mark.parametrize("units", [True, False])
def test_bf16_native_uses_bf16_only_where_the_hardware_has_it(tiny_path, monkeypatch, units):
    """"bf16-native" is bf16 on a CPU with bf16 units and the model's fp32 elsewhere, where
    bf16 would be emulated (20–24x slower on an AVX2 CPU); the evaluation records which it was."""
    from dataclasses import replace

    from flowarena.harness.run import EvalSettings, Evaluation
    from flowarena.models.base import native_bf16, resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16("cpu") is units
    assert resolve_precision("bf16-native", "cpu") == (torch.bfloat16 if units else None)
    assert resolve_precision("bf16", "cpu") == torch.bfloat16 and resolve_precision("auto", "cpu") is None
    settings = EvalSettings(every=1, limit=4, ood_limit=2, steps=2, kl_prompts=2, samples=2)
    record = Evaluation(replace(settings, precision="bf16-native"))(load_toy(tiny_path), None, CFG)
    assert {r["precision"] for r in record.benchmarks.values()} == {"bfloat16" if units else "float32"}
    seen = []
    tr = _trainer(tiny_path, ode_precision="bf16-native")
    velocity = tr.model.velocity
    tr.model.velocity = lambda *a, **k: seen.append(tr.model.compute_dtype) or velocity(*a, **k)
    window = tr.rollout(0).window
    assert {d for k, d in enumerate(seen) if k not in window} == {torch.bfloat16 if units else torch.float32}
    assert {d for k, d in enumerate(seen) if k in window} == {torch.float32}  # the trained steps never


def test_plain_bf16_on_a_cpu_without_bf16_units_is_warned_about(monkeypatch):
    """`bench run` names each setting that asks for emulated bf16; "bf16-native" is not one."""
    from dataclasses import replace

    from flowarena.harness.run import get_preset
    from flowarena.harness.run.experiment import emulated_bf16

    p = get_preset("default")
    assert (p.eval.precision, p.train.ode_precision) == ("bf16-native", "bf16-native")
    asked = replace(p, eval=replace(p.eval, precision="bf16"), train=replace(p.train, ode_precision="bf16"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert emulated_bf16(p, "cpu") == []
    lines = emulated_bf16(asked, "cpu")
    assert [line.split(" =")[0] for line in lines] == ["eval.precision", "train.ode_precision"]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert emulated_bf16(asked, "cpu") == []
