from dataclasses import dataclass, field
from typing import Literal

import pytest

from dmao.config import ConfigError, apply_overrides, from_dict, to_dict
from dmao.training.config import load_run_config


@dataclass
class Inner:
    rate: float = 0.1
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


@dataclass
class Outer:
    steps: int = 10
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_nested_values_are_typed_and_defaults_fill_in():
    cfg = from_dict(Outer, {"steps": 5.0, "inner": {"rate": 1, "sizes": [3, 4, 5]}})
    assert cfg.steps == 5 and isinstance(cfg.steps, int)
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.sizes == (3, 4, 5) and cfg.inner.kind == "a"
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_misspelled_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rtae'.*did you mean 'rate'"):
        from_dict(Outer, {"inner": {"rtae": 0.2}})
    with pytest.raises(ConfigError, match=r"'stpes'.*'steps'"):
        from_dict(Outer, {"stpes": 3})


def test_wrong_types_and_choices_name_the_key():
    with pytest.raises(ConfigError, match=r"steps: expected an integer"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"inner.kind: 'c' is not one of 'a', 'b'"):
        from_dict(Outer, {"inner": {"kind": "c"}})
    with pytest.raises(ConfigError, match=r"flag: expected true or false"):
        from_dict(Outer, {"flag": "yes please"})
    with pytest.raises(ConfigError, match=r"inner: rate must be >= 0"):
        from_dict(Outer, {"inner": {"rate": -1}})


def test_overrides_parse_yaml_values_into_nested_sections():
    data = apply_overrides({"inner": {"rate": 0.5}}, ["inner.rate=0.25", "flag=true", "name=run 1", "steps=7"])
    cfg = from_dict(Outer, data)
    assert (cfg.inner.rate, cfg.flag, cfg.name, cfg.steps) == (0.25, True, "run 1", 7)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["noequals"])
    with pytest.raises(ConfigError, match=r"'steps' is a value"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_the_shipped_dmao_settings_are_the_papers():
    """Every DMAO setting of the main job that the paper fixes, as the paper ran it (the config says where and why
    the rest differs)."""
    cfg = load_run_config("default")
    score, schedule, grow = cfg.dmao.score, cfg.dmao.schedule, cfg.dmao.grow
    assert cfg.dmao.enabled and score.kind == "taylor" and score.scored_weights == "primary"
    assert score.alpha == 0.9 and not score.normalize_per_type and not score.accumulate
    assert (schedule.trigger, schedule.num_events, schedule.t_end, schedule.delta) == ("fixed", 1, 0.15, 0.15)
    assert grow.mode == "copy" and grow.copy_moments
    assert grow.copy_noise_relative_std == grow.rebuilt_noise_variance == 0.0
    assert cfg.model.encoder.dropout_scales_with_width  # the authors scaled dropout with width in all runs
