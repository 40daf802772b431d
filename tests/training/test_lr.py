import pytest

from dmao.training.lr import one_cycle_factor


def test_one_cycle_shape_by_hand():
    # 1000 steps: warm-up 0..450 from 0.1 to 1, decay 450..900 back to 0.1, anneal 900..1000 to 0.001.
    f = lambda s: one_cycle_factor(s, 1000, 0.1, 0.45, 0.45, 0.001)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(225) == pytest.approx(0.55)
    assert f(450) == pytest.approx(1.0)
    assert f(675) == pytest.approx(0.55)
    assert f(900) == pytest.approx(0.1)
    assert f(950) == pytest.approx(0.0505)
    assert f(1000) == pytest.approx(0.001)
    assert f(5000) == pytest.approx(0.001)
