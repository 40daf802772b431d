import numpy as np
import pytest
import scipy.stats

from dmao.realloc.schedule import EventSchedule, ScheduleConfig, relative_loss_decrease, spearman


@pytest.mark.parametrize("num_events, expected", [(1, [1500]), (3, [500, 1000, 1500]), (2, [750, 1500])])
def test_fixed_events_are_evenly_spaced_up_to_t_end(num_events, expected):
    schedule = EventSchedule(ScheduleConfig(num_events=num_events, t_end=0.15), total_steps=10_000, score_interval=100)
    assert schedule.fixed_steps == expected
    fired = []
    for step in range(1, 10_001):
        if schedule.due(step, has_scores=True):
            fired.append(step)
            schedule.event_done()
    assert fired == expected and schedule.finished


def test_no_event_without_scores():
    schedule = EventSchedule(ScheduleConfig(), total_steps=10_000, score_interval=100)
    assert not schedule.due(1500, has_scores=False)
    assert schedule.due(1500, has_scores=True)


def test_schedule_errors_are_explicit():
    with pytest.raises(ValueError, match="ScoreConfig.interval=1000"):
        EventSchedule(ScheduleConfig(t_end=0.15), total_steps=2000, score_interval=1000)
    with pytest.raises(ValueError, match="5 events up to t_end=0.15 do not fit into 10 steps"):
        EventSchedule(ScheduleConfig(num_events=5), total_steps=10, score_interval=1)
    with pytest.raises(ValueError, match="ScheduleConfig.delta"):
        ScheduleConfig(delta=1.0)
    with pytest.raises(ValueError, match="min_fraction < max_fraction"):
        ScheduleConfig(min_fraction=0.3, max_fraction=0.2)
    with pytest.raises(ValueError, match="needs rank_correlation or loss_flatness"):
        ScheduleConfig(trigger="convergence", rank_correlation=None)


def test_spearman_and_loss_slope_match_references():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    b_related = a + 0.1 * rng.random(30)
    for x, y in ((a, b), (a, b_related), (a, a)):
        assert spearman(list(x), list(y)) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    losses = 5.0 - 0.01 * np.arange(100) + 0.1 * rng.random(100)
    slope = np.polyfit(np.arange(100), losses, 1)[0]
    assert relative_loss_decrease(list(losses)) == pytest.approx(-slope * 99 / losses.mean())


def convergence(**kwargs) -> ScheduleConfig:
    return ScheduleConfig(trigger="convergence", min_fraction=0.1, max_fraction=0.5, **kwargs)


def run(schedule, rankings, losses=None, interval=20, total=1000):
    """Feed a measurement every ``interval`` steps; return (step, reason) of the first event."""
    for step in range(1, total + 1):
        if losses is not None:
            schedule.observe_loss(losses(step))
        if step % interval == 0:
            schedule.observe_scores(step, rankings(step))
        if schedule.due(step, has_scores=step >= interval):
            return step, schedule.reason(step)
    return None


def test_convergence_fires_on_a_stable_ranking_but_not_before_the_window():
    schedule = EventSchedule(convergence(rank_correlation=0.9, patience=3), total_steps=1000, score_interval=20)
    assert schedule.window(0) == (100, 500)
    # Stable from the start: the streak reaches 3 at step 80, but the window opens at 100.
    step, reason = run(schedule, lambda step: [1.0, 3.0, 2.0, 5.0, 4.0])
    assert step == 100 and "ranking stable (Spearman 1.000 >= 0.9 for 3 measurements)" in reason


def test_convergence_waits_for_patience_inside_the_window():
    schedule = EventSchedule(convergence(rank_correlation=0.9, patience=3), total_steps=1000, score_interval=20)
    rng = np.random.default_rng(1)
    # A random ranking until step 200, then a fixed one: 220 still differs from 200; stable at 240, 260, 280.
    step, reason = run(schedule, lambda s: list(rng.random(12)) if s <= 200 else list(range(12)))
    assert step == 280 and "Spearman" in reason


def test_convergence_falls_back_to_the_upper_bound():
    schedule = EventSchedule(convergence(rank_correlation=0.99), total_steps=1000, score_interval=20)
    rng = np.random.default_rng(2)
    step, reason = run(schedule, lambda s: list(rng.random(12)))
    assert step == 500 and "upper bound reached (max_fraction=0.5" in reason


def test_convergence_fires_when_the_loss_flattens():
    cfg = convergence(rank_correlation=None, loss_flatness=0.01, loss_window=50)
    schedule = EventSchedule(cfg, total_steps=1000, score_interval=20)

    def loss(step):  # falls until step 300, then flat
        return 10.0 - 0.02 * min(step, 300)

    step, reason = run(schedule, lambda s: [0.0, 1.0], losses=loss)
    # Reference: the first measurement step whose last 50 losses fit a line falling by < 1 % of their mean.
    for expected in range(100, 501, 20):
        window = np.array([loss(s) for s in range(expected - 49, expected + 1)])
        if -np.polyfit(np.arange(50), window, 1)[0] * 49 / window.mean() < 0.01:
            break
    assert 300 < step == expected and reason.startswith("loss flat")


def test_convergence_windows_scale_with_the_event_number():
    schedule = EventSchedule(convergence(num_events=2), total_steps=1000, score_interval=20)
    assert schedule.window(0) == (50, 250) and schedule.window(1) == (100, 500)


def test_schedule_state_round_trips():
    schedule = EventSchedule(convergence(loss_flatness=0.01, loss_window=10), total_steps=1000, score_interval=20)
    for step in range(1, 61):
        schedule.observe_loss(1.0 / step)
        if step % 20 == 0:
            schedule.observe_scores(step, [1.0, 2.0, float(step)])
    restored = EventSchedule(convergence(loss_flatness=0.01, loss_window=10), total_steps=1000, score_interval=20)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()
