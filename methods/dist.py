"""Multi-process training on torch.distributed, launched by `torchrun` or `accelerate launch`.

Both launchers set RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (and LOCAL_RANK); `init()`
joins the process group from them (gloo on CPU, nccl on CUDA) and is a no-op in a single
process, where every helper below falls back to the local value. How the trainer uses it:

- rollouts: rank r samples a contiguous block of whole prompt groups; the noise is drawn
  for the whole batch from the (seed, epoch) generators and sliced, so a sample is the same
  whatever the number of ranks or their timing;
- the rewards and the trajectories are gathered, so advantages are computed over complete
  groups on every rank, exactly as in one process;
- each global mini-batch (the single-process order) is split across ranks; DDP averages the
  LoRA gradients of equal shares, which is the gradient of the mini-batch mean;
- diagnostics are computed on gathered tensors; only rank 0 writes files;
- evaluation (harness/run/evaluation.py, harness/benchmarks) gives each rank a contiguous
  share of the prompts in whole blocks of the batches one process computes (`share`), each
  prompt with the noise it has in one process, and gathers the per-prompt results in order
  (`concat`): every rank then summarises exactly what one process would, and rank 0 writes.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


_WAIT = None  # the group `barrier` waits in: gloo on the CPU, so NCCL's watchdog never sees the wait


def init(device: str = "cpu") -> None:
    """Join the launcher's process group (once); nothing to do in a single process. On CUDA
    (nccl) each process first takes its own GPU, cuda:LOCAL_RANK, and a CPU (gloo) group with
    a day's timeout carries the barriers and the evaluation's gathers, so ranks can wait out
    rank 0's checkpoints and the slowest share of an evaluation without NCCL timing out."""
    global _WAIT
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    _WAIT = dist.new_group(backend="gloo", timeout=timedelta(hours=24)) if backend == "nccl" else None


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: NCCL takes CUDA tensors only."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_device(device: str) -> str:
    """`cuda` under a launcher means this process's GPU, cuda:LOCAL_RANK."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def barrier() -> None:
    if active():
        dist.barrier(group=_WAIT)


def gather(t: Tensor) -> Tensor:
    """Every rank's equal-sized `t` concatenated along dim 0 in rank order (all ranks get it),
    on `t`'s device (the collective itself runs where the backend needs it)."""
    if not active():
        return t
    comm = t.contiguous().to(_comm_device())
    parts = [torch.empty_like(comm) for _ in range(world())]
    dist.all_gather(parts, comm)
    return torch.cat(parts).to(t.device)


def mean(value: float) -> float:
    """The mean over ranks of a per-rank scalar."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t) / world()


def any_true(flag: bool) -> bool:
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def share(n: int, block: int = 1) -> range:
    """This rank's contiguous share of `n` items, in whole blocks of `block` (the last one may
    be short) split as evenly as the ranks allow: computed block by block, an item lands in the
    same batch as in one process, so it gets the same numbers on any number of ranks."""
    blocks = -(-n // block)
    return range(min(n, rank() * blocks // world() * block), min(n, (rank() + 1) * blocks // world() * block))


def concat(items: list) -> list:
    """Every rank's list (picklable CPU values), concatenated in rank order, on every rank: the
    ranks' `share`s put back together. Over the barriers' group (gloo, a day's timeout on CUDA),
    since the ranks finish their shares at different times."""
    if not active():
        return items
    parts: list = [None] * world()
    dist.all_gather_object(parts, items, group=_WAIT)
    return [x for part in parts for x in part]


class VelocityModule(nn.Module):
    """The denoiser as DDP sees it: its parameters are DDP's, its forward is the adapter's
    `velocity` (with whatever packing, conditioning and CFG the adapter does), so DDP's
    gradient hooks see every training forward without the adapters knowing about DDP."""

    def __init__(self, model):
        super().__init__()
        self.denoiser = model.get_denoiser()
        self._model = (model,)  # not a submodule: DDP syncs the denoiser only

    def forward(self, x: Tensor, sigma: Tensor, embeds, guidance: float) -> Tensor:
        return self._model[0].velocity(x, sigma, embeds, guidance)


def wrap(model, device: str):
    """DDP around the model's velocity when distributed, else None."""
    if not active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    return DistributedDataParallel(VelocityModule(model), device_ids=[dev] if dev.type == "cuda" else None,
                                   broadcast_buffers=False)
