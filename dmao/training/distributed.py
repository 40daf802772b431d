"""Process-group set-up for ``torchrun``: NCCL on GPUs, Gloo on CPU."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    """Processes on this node."""

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
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, local_world_size)


class PeerStopped(RuntimeError):
    """Another rank left while this one waited for it: that rank's own error says why."""


def barrier(info: DistInfo) -> None:
    if not info.enabled:
        return
    try:
        dist.barrier()
    except RuntimeError as err:  # the backend's own message (gloo: "Connection closed by peer") names no cause
        raise PeerStopped(
            f"rank {info.rank}: another rank stopped while this one waited for it (its error is above; "
            f"{str(err).splitlines()[0][:120]})"
        ) from None


def all_ranks_agree(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (e.g. 'this step's loss is finite')."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def broadcast_from_main(info: DistInfo, obj: Any) -> Any:
    """``obj`` as rank 0 has it, on every rank (unchanged in a single process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def max_over_ranks(info: DistInfo, values: tuple[int, ...], device: torch.device) -> tuple[int, ...]:
    """The element-wise maximum of small integer flags over all ranks (one all-reduce)."""
    if not info.enabled:
        return tuple(values)
    flags = torch.tensor([float(v) for v in values], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return tuple(int(v) for v in flags.tolist())


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def tensor_digests(module: torch.nn.Module) -> list[tuple[str, str, tuple[int, ...], str]]:
    """(name, dtype, shape, SHA-256 of the bytes) of every parameter and buffer: equal digests mean equal tensors,
    bit for bit, wherever the values sit (a permutation of heads changes them, unlike sums or norms)."""
    digests = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digests.append((name, str(tensor.dtype), tuple(tensor.shape), hashlib.sha256(data.numpy()).hexdigest()))
    return digests


def assert_replicas_identical(
    info: DistInfo, module: torch.nn.Module, device: torch.device, buffers_from_rank0: bool = False
) -> None:
    """Raise, naming the tensors, if any rank's parameters or buffers differ from rank 0's in name, dtype, shape or a
    single bit: DDP keeps replicas in step only while every rank resizes identically.

    Call it before wrapping the module in a new DDP (whose constructor copies rank 0's tensors to every rank and
    would hide a divergence). ``buffers_from_rank0``: first give every rank rank 0's buffers, as DDP does at the
    start of each forward; running statistics updated by each rank's own last batch then do not count as divergence,
    while a buffer of another name, dtype or shape still does."""
    if not info.enabled:
        return

    def compare(digests: list[tuple], what: str) -> None:
        gathered: list[object] = [None] * info.world_size
        dist.all_gather_object(gathered, digests)
        reference = {d[0]: d[1:] for d in gathered[0]}
        for rank, theirs in enumerate(gathered[1:], start=1):
            theirs = {d[0]: d[1:] for d in theirs}
            differing = sorted(n for n in set(reference) | set(theirs) if reference.get(n) != theirs.get(n))
            if differing:
                raise RuntimeError(
                    f"rank {rank}'s model differs from rank 0's in the {what} of {', '.join(differing[:5])}"
                    f"{' ...' if len(differing) > 5 else ''}: the replicas have diverged"
                )

    digests = tensor_digests(module)
    compare([d[:3] for d in digests], "name, dtype or shape")  # before any broadcast, which needs equal shapes
    if buffers_from_rank0:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)
        digests = tensor_digests(module)
    compare(digests, "values")
