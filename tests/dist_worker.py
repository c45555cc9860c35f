"""Run by tests/test_distributed.py under torchrun (or alone): two epochs of the common
trainer on the tiny toy model; rank 0 writes the rewards, advantages, per-update losses,
diagnostics and final LoRA weights, so a test can compare N processes with one."""

import json
import sys

import torch

from flowarena.core.io import save_tensors
from flowarena.methods import build_method, dist
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

CONFIG = TrainConfig(prompts_per_epoch=4, group_size=4, minibatch_size=8, steps=4, sde_window=2,
                     inner_loops=2, lr=1e-2, lora_rank=4, lora_alpha=8, beta=0.01)


def main(out: str, model_path: str, method: str, micro_batch: str = "") -> None:
    from dataclasses import replace

    dist.init("cpu")
    torch.manual_seed(0)
    cfg = replace(CONFIG, micro_batch=int(micro_batch) if micro_batch else None)
    tr = Trainer(load_toy(model_path), build_method(method), build_reward("toy-colour"),
                 load_toy_split("train"), cfg, seed=3)
    epochs, losses = [], []
    for epoch in range(2):
        ro = tr.rollout(epoch)
        metrics, samples = tr.update(ro, epoch)
        epochs.append({"rewards": ro.rewards.tolist(), "advantages": ro.advantages.tolist(),
                       "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}})
        losses.append(metrics["loss"])
    if dist.is_main():
        with open(out + ".json", "w") as f:
            json.dump({"world": dist.world(), "epochs": epochs}, f)
        save_tensors(out + ".safetensors", tr.model.trainable_state_dict())
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:5])
