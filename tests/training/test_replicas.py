"""The replica check compares every parameter and buffer bit for bit across ranks (2 Gloo processes)."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dmao.training.distributed import DistInfo, assert_replicas_identical, max_over_ranks, tensor_digests


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_()
    return net


def outcome(net: nn.Module, info: DistInfo, **kwargs) -> str:
    try:
        assert_replicas_identical(info, net, torch.device("cpu"), **kwargs)
        return "identical"
    except RuntimeError as err:
        return str(err)


def rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2)
    results = {}
    try:
        results["same"] = outcome(model(), info)
        net = model()
        if rank == 1:  # swap two output rows: every sum and sum of squares of the tensor stays the same
            with torch.no_grad():
                net[0].weight[[0, 1]] = net[0].weight[[1, 0]]
        results["permuted"] = outcome(net, info)
        net = model()
        if rank == 1:  # as if rank 1's last batch had moved its running statistics
            net[1].running_mean.add_(0.5)
        results["buffer"] = outcome(net, info)
        results["buffer_synced"] = outcome(net, info, buffers_from_rank0=True)
        results["buffer_after_sync"] = float(net[1].running_mean.sum())
        net = model()
        if rank == 1:
            net[1].running_var = torch.ones(7)
        results["buffer_shape"] = outcome(net, info, buffers_from_rank0=True)
        # The per-batch agreement: rank 1 got a SIGTERM, rank 0's batch was empty: both ranks learn both.
        results["agreed"] = max_over_ranks(info, (15 if rank == 1 else 0, int(rank == 0)), torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


@pytest.mark.slow  # two processes that import torch
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_the_replica_check_sees_permutations_and_buffers(tmp_path):
    mp.spawn(rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["same"] == one["same"] == "identical"
    assert "rank 1's model differs from rank 0's in the values of 0.weight" in zero["permuted"]
    assert "in the values of 1.running_mean" in zero["buffer"]
    # DDP gives every rank rank 0's buffers at each forward; the check can do the same first
    assert zero["buffer_synced"] == one["buffer_synced"] == "identical"
    assert zero["buffer_after_sync"] == one["buffer_after_sync"]
    assert "name, dtype or shape of 1.running_var" in zero["buffer_shape"]
    assert zero["agreed"] == one["agreed"] == [15, 1]


def test_digests_are_exact_and_cover_buffers():
    a, b = model(), model()
    assert tensor_digests(a) == tensor_digests(b)
    names = [d[0] for d in tensor_digests(a)]
    assert "1.running_mean" in names and "1.num_batches_tracked" in names
    with torch.no_grad():
        b[0].weight[0, 0] = torch.nextafter(b[0].weight[0, 0], torch.tensor(2.0))  # one bit
    assert tensor_digests(a) != tensor_digests(b)
