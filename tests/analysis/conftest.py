import pytest
from analysis_fakes import FakeRun, make_fake_run


@pytest.fixture
def fake_run(tmp_path) -> FakeRun:
    return make_fake_run(tmp_path)
