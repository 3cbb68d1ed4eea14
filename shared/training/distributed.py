"""Multi-process data parallelism under torchrun (gloo on CPU, NCCL on GPU).

Gradients are averaged with one all-reduce per optimizer group over a flat buffer — what DDP does,
without its module wrapper, because a task's losses may touch several modules (e.g. a generator and a
discriminator) that step separately.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        # torch._dynamo, imported lazily by the first optimizer, keeps a reference to a process group that exists
        # when it is imported; destroy_process_group then leaves gloo's worker threads running, and when one drops
        # its last finished all-reduce during interpreter shutdown it needs the GIL and aborts the process
        # ("terminate called without an active exception"). Imported first, it holds none.
        import torch._dynamo  # noqa: F401

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(parameters: list[torch.nn.Parameter], world: int):
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def mean_across(values: dict[str, float], world: int, device) -> dict[str, float]:
    if world == 1 or not values:
        return values
    keys = sorted(values)
    flat = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return {k: v / world for k, v in zip(keys, flat.tolist())}


def any_across(flag: bool, world: int, device) -> bool:
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)
