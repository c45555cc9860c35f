"""The prepared GPU check: `bench run` with the sd35-geneval2 recipe on the full-size
SD3.5-medium architecture, measured (not a test; timings never gate CI).

The pipeline is SD3.5-medium's architecture, every part at full size (MMDiT 2.5 B, CLIP-L,
OpenCLIP bigG, T5-XXL, the 16-channel VAE) with random weights built from configs in code
(no download; tokenizers are the tests' small ones), saved in bf16 and loaded by `bench run`
through `from_pretrained` as a user's checkpoint is. The recipe is scaled to 2 epochs of
4 prompts × 16 (mini-batch 32: two updates an epoch, the second off-policy, as in the
recipe), GenEval2 between epochs on 8 val prompts and at the end on 8 test prompts, judged
by the tests' tiny Qwen3-VL. Flow-DPPO only. Then one epoch again with fp32 trained steps.
Writes OUT/gpu_smoke.json after every stage, so a run cut short keeps what it measured:

- peak GPU memory per phase (rollout with its decode, reward, update, evaluation) and device, GB,
  beside what benchmarks/memory_plan.py plans for the same settings;
- seconds per epoch (rollout, update), images per second of the rollout;
- the update's time over a bare forward + backward of the same micro-batches;
- the ratio's noise floor in bf16 (same weights; rounding in a change against fp32);
- the cost of `--trained-precision fp32` (seconds per epoch, and its rounding).

    python benchmarks/gpu_smoke.py --out /tmp/smoke                         # H100 / H200, ≤ 8 minutes
    python benchmarks/gpu_smoke.py --out /tmp/smoke --size tiny --device cpu  # the same path, small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo itself and its tests/ (tiny tokenizers and judge)

from benchmarks.gpu_lora_step import SD35_MEDIUM, _sync  # noqa: E402 - after the path

# stabilityai/stable-diffusion-3.5-medium: text_encoder, text_encoder_2, text_encoder_3, vae configs
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
           norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4,
           scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
SIZES = {  # the recipe scaled: what the run trains and evaluates at each size
    "medium": dict(resolution=512, prompts=4, group=16, minibatch=32, steps=10, eval_limit=8, eval_steps=40),
    "tiny": dict(resolution=32, prompts=2, group=4, minibatch=4, steps=6, eval_limit=2, eval_steps=4),
}


def build_sd35_medium(directory: Path, device: torch.device) -> Path:
    """SD3.5-medium's pipeline with random weights, initialised on `device`, saved in bf16."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from tests.tiny_pipelines import clip_tokenizer, t5_tokenizer

    clip, t5 = clip_tokenizer(), t5_tokenizer()
    eos = clip.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not the CPU's minutes
        def text(cfg):
            return CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(clip), max_position_embeddings=77, bos_token_id=0, eos_token_id=eos,
                pad_token_id=eos, **cfg)).to(torch.bfloat16)
        pipe = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**SD35_MEDIUM).to(torch.bfloat16),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**VAE).to(torch.bfloat16),
            text_encoder=text(CLIP_L), tokenizer=clip,
            text_encoder_2=text(CLIP_G), tokenizer_2=clip_tokenizer(),
            text_encoder_3=T5EncoderModel(T5Config(vocab_size=len(t5), **T5_XXL)).to(torch.bfloat16),
            tokenizer_3=t5)
    pipe.save_pretrained(directory)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return directory


def build_tiny(directory: Path, device: torch.device) -> Path:
    from tests.tiny_pipelines import save_tiny

    return save_tiny("sd35", directory)


def write(out: Path, result: dict) -> None:
    tmp = out / "gpu_smoke.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "gpu_smoke.json")


def bench_run(args, pipe: Path, judge: Path, run_dir: Path, size: dict, epochs: int,
              *extra: str) -> list[dict]:
    """`bench run` itself, in this process; the cell's metrics rows (with its peak memory)."""
    from flowarena.harness.cli import app

    argv = ["run", "--model", "sd35", "--model-path", str(pipe), "--judge", str(judge),
            "--device", args.device, "--out", str(run_dir), "--methods", "dppo", "--epochs", str(epochs),
            "--prompts-per-epoch", str(size["prompts"]), "--group-size", str(size["group"]),
            "--steps", str(size["steps"]), "--eval-steps", str(size["steps"]),
            "--resolution", str(size["resolution"]),
            "--eval-benchmarks", "geneval2", "--eval-limit", str(size["eval_limit"]),
            "--eval-final-limit", str(size["eval_limit"]),
            "--config", str(run_dir.parent / "minibatch.toml"),  # sd35-geneval2 as its base
            *extra]
    app(argv, standalone_mode=False)
    metrics = run_dir / "sd35" / "dppo" / "seed0" / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def peak_memory(row: dict) -> dict[str, dict[str, float]]:
    """Phase → device → GB, as an epoch row carries the cell's peaks (`peak_gb/<phase>/<device>`)."""
    peaks: dict[str, dict[str, float]] = {}
    for key, gb in row.items():
        if key.startswith("peak_gb/"):
            _, phase, device = key.split("/")
            peaks.setdefault(phase, {})[device] = gb
    return peaks


def bare_forward_backward(pipe: Path, args, size: dict, rows: list[dict]) -> float:
    """Seconds of the bare forward + backward passes one update makes (micro-batches of the
    recipe's size, every trained step of both mini-batches), with the recipe's LoRA."""
    from flowarena.models import load_model

    model = load_model("sd35", str(pipe), args.device, resolution=size["resolution"])
    params = model.setup_training(32, 64.0)
    micro, window = 8 if args.size == "medium" else 2, 3
    passes = window * (size["prompts"] * size["group"] // micro)
    x = torch.randn(micro, *model.latent_shape, device=model.device)
    s = torch.full((micro,), 0.7, device=model.device)
    embeds = model.encode_prompts(["a photo of a cat"] * micro)

    def one():
        model.velocity(x, s, embeds).square().mean().backward()

    one()  # warm-up
    device = torch.device(args.device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(passes):
        one()
    _sync(device)
    del params
    return time.perf_counter() - t0


def planned(args, size: dict, micro: int) -> dict[str, float]:
    """benchmarks/memory_plan.py's GB per phase on the policy's card for SD3.5-M at this run's
    settings (shallow models scaled to full depth at `--size tiny`: the path, in seconds)."""
    from benchmarks.memory_plan import plan

    train = {"prompts_per_epoch": size["prompts"], "group_size": size["group"], "steps": size["steps"],
             "minibatch_size": size["minibatch"], "micro_batch": micro, "rollout_batch": micro}
    ev = {"steps": size["eval_steps"], "limit": size["eval_limit"]}
    result = plan("sd35-geneval2", scaled=args.size == "tiny", train=train, eval=ev)
    return {phase: gb["policy_card_gb"] for phase, gb in result["phases"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", choices=tuple(SIZES), default="medium")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32-trained-steps epoch")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, size, device = args.out, SIZES[args.size], torch.device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"size": args.size, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else "cpu", "torch": torch.__version__, "recipe": "sd35-geneval2", **size,
                    "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    t0 = time.perf_counter()
    pipe = (build_sd35_medium if args.size == "medium" else build_tiny)(out / "pipeline", device)
    from tests.tiny_scorers import save_qwen3_vl

    judge = save_qwen3_vl(out / "judge")
    micro = 8 if args.size == "medium" else 2  # the recipe samples and trains in one batch shape
    (out / "minibatch.toml").write_text(
        f'base = "sd35-geneval2"\n[train]\nminibatch_size = {size["minibatch"]}\n'
        f'micro_batch = {micro}\nrollout_batch = {micro}\n[eval]\nsteps = {size["eval_steps"]}\n'
        "every = 1\nkl_prompts = 2\nsamples = 2\n")
    result["build_s"] = round(time.perf_counter() - t0, 1)
    write(out, result)

    t0 = time.perf_counter()
    rows = bench_run(args, pipe, judge, out / "run", size, 2)
    result["bench_run_s"] = round(time.perf_counter() - t0, 1)
    images = size["prompts"] * size["group"]
    result["epochs"] = [{k: r[k] for k in ("rollout_s", "update_s", "wall_seconds") if k in r} for r in rows]
    last = rows[-1]  # the second epoch: kernels compiled, allocator warm
    result["seconds_per_epoch"] = round(last["rollout_s"] + last["update_s"], 2)
    result["rollout_images_per_s"] = round(images / last["rollout_s"], 3)
    result["peak_memory_gb"] = peak_memory(last)  # the cell's, per device, up to its last epoch
    result["noise_floor"] = {k: v for k, v in rows[0].items()
                                  if k.startswith(("floor_", "rounding_", "change_"))}
    result["planned_gb"] = planned(args, size, micro)  # the plan's numbers beside the measured peaks
    write(out, result)

    bare = bare_forward_backward(pipe, args, size, rows)
    result["bare_forward_backward_s"] = round(bare, 2)
    result["update_over_bare"] = round(last["update_s"] / bare, 2)
    write(out, result)

    if not args.no_fp32:
        fp32 = bench_run(args, pipe, judge, out / "run-fp32", size, 1, "--trained-precision", "fp32")[0]
        result["trained_fp32"] = {
            "seconds_per_epoch": round(fp32["rollout_s"] + fp32["update_s"], 2),
            "over_bf16_first_epoch": round((fp32["rollout_s"] + fp32["update_s"])
                                           / (rows[0]["rollout_s"] + rows[0]["update_s"]), 2),
            "peak_memory_gb": peak_memory(fp32),
            **{k: v for k, v in fp32.items() if k.startswith(("rounding_", "change_"))}}
        write(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
