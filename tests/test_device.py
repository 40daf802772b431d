import pytest
import torch

from dmao.device import check_local_ranks


def test_more_local_ranks_than_accelerators_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.processes=2 on a one-accelerator machine: refused before any rank starts, instead of a rank dying on a
    device index that does not exist."""
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    accelerator = torch.device("meta")  # stands for any accelerator type: the check counts devices of that type
    check_local_ranks(1, accelerator)
    with pytest.raises(ValueError, match=r"2 ranks on this machine, but it has 1 meta device"):
        check_local_ranks(2, accelerator)
    check_local_ranks(8, torch.device("cpu"))  # CPU ranks share the cores
