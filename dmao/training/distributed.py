"""Process-group set-up for ``torchrun``: NCCL on GPUs, Gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type != "cpu":
        torch.accelerator.set_device_index(local_rank)  # one accelerator per process; collectives use it
    if not dist.is_initialized():
        backend = "gloo" if device.type == "cpu" else dist.get_default_backend_for_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_ranks_agree(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (e.g. 'this step's loss is finite')."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def assert_replicas_identical(info: DistInfo, module: torch.nn.Module, device: torch.device) -> None:
    """Raise if any rank's parameters differ from rank 0's (names, shapes and exact values, via a per-tensor
    float64 sum and sum of squares): DDP keeps replicas in step only while every rank resizes identically."""
    if not info.enabled:
        return
    names = [name for name, _ in module.named_parameters()]
    local = torch.stack(
        [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in module.parameters()]
    ).to(device)  # [P, 2]
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, (names, local.cpu()))
    ref_names, ref = gathered[0]
    for rank, (other_names, values) in enumerate(gathered[1:], start=1):
        if other_names != ref_names or not torch.equal(values, ref):
            raise RuntimeError(f"rank {rank}'s parameters differ from rank 0's: the replicas have diverged")
