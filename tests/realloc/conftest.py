import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """These tests use tiny tensors: one thread is fastest, and far faster when other processes load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
