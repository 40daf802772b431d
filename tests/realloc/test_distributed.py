"""Under torch.distributed every rank must take rank 0's decision and resize identically."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmao.realloc import GrowConfig, Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig


def rank_main(rank: int, world_size: int, init_file: str, out_dir: str, test_dir: str) -> None:
    sys.path.insert(0, test_dir)
    from realloc_toys import ToyNet

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        net = ToyNet.uniform(2)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
        cfg = ReallocConfig(ScoreConfig(interval=1), ScheduleConfig(t_end=0.5, delta=0.3), GrowConfig(mode="random"))
        engine = Reallocator(net.resizable_modules(), cfg, total_steps=4, seed=3)
        data = torch.Generator().manual_seed(100 + rank)  # no gradient all-reduce: every rank scores differently
        for step in (1, 2):
            loss = net(torch.randn(4, 3, 8, generator=data)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            engine.after_backward(step)
            local_scores = engine.scores.scores()
            if engine.due(step):
                engine.reallocate(step, optimizer)
        # Only the parameters: batch-norm statistics follow each rank's own data.
        torch.save(
            {"counts": net.counts(), "params": dict(net.named_parameters()), "scores": local_scores},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes that import torch
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_end_with_identical_layouts_and_weights(tmp_path):
    mp.spawn(rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), os.path.dirname(__file__)), nprocs=2)
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert zero["scores"] != one["scores"]  # each rank on its own would have planned differently
    assert zero["counts"] == one["counts"] != [{"ff1": 3, "mhsa": 2, "conv": 3}] * 2
    assert zero["params"].keys() == one["params"].keys()
    for name, tensor in zero["params"].items():  # random growth drew the same numbers on both ranks
        torch.testing.assert_close(tensor, one["params"][name], rtol=0, atol=0, msg=name)
