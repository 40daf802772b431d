import pytest
import torch

from dmao.training.config import load_run_config


@pytest.fixture(autouse=True)
def single_thread():
    """The tests use small tensors: one torch thread is fastest, and far faster when other processes load the cores
    (a second thread only adds synchronisation, which a busy machine turns into stalls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """One embedded-corpus cache for the whole session: the smoke corpus is synthesised once."""
    return tmp_path_factory.mktemp("dmao-cache")


@pytest.fixture
def smoke_config(corpus_cache, tmp_path):
    """The shipped smoke config, writing into this test's tmp dir."""

    def make(*overrides: str):
        return load_run_config("smoke", [f"out_dir={tmp_path / 'run'}", f"data.cache_dir={corpus_cache}", *overrides])

    return make
