from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from dmao.config import ConfigError, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from dmao.training.config import CONFIG_DIR, RunConfig, load_run_config, resolve_config_path


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


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_under_the_file_itself(tmp_path):
    """Later bases win over earlier ones, the file over all; mappings merge at every depth, lists are replaced; a
    base is found relative to the file that names it (here one level down, which names one beside itself)."""
    write(tmp_path / "shared" / "first.yaml", "a: 1\nsection: {x: 1, y: 1, deep: {p: 1, q: 1}}\nlist: [1, 2, 3]\n")
    write(tmp_path / "shared" / "second.yaml", "base: first.yaml\nsection: {y: 2, z: 2, deep: {q: 2}}\nb: 2\n")
    write(tmp_path / "other.yaml", "b: 3\nsection: {z: 3}\n")
    child = write(tmp_path / "child.yaml", "base: [shared/second.yaml, other.yaml]\nsection: {x: 4}\nlist: [9]\n")
    assert load_yaml(child) == {
        "a": 1,
        "b": 3,
        "section": {"x": 4, "y": 2, "z": 3, "deep": {"p": 1, "q": 2}},
        "list": [9],
    }


def test_a_base_shared_by_two_bases_is_no_cycle(tmp_path):
    write(tmp_path / "root.yaml", "n: 0\n")
    write(tmp_path / "left.yaml", "base: root.yaml\nleft: 1\n")
    write(tmp_path / "right.yaml", "base: root.yaml\nright: 1\n")
    child = write(tmp_path / "child.yaml", "base: [left.yaml, right.yaml]\n")
    assert load_yaml(child) == {"n": 0, "left": 1, "right": 1}


def test_cycles_and_missing_bases_are_errors_naming_the_file(tmp_path):
    first = write(tmp_path / "first.yaml", "base: second.yaml\n")
    write(tmp_path / "second.yaml", "base: sub/../first.yaml\n")
    with pytest.raises(ConfigError, match=r"second\.yaml: base 'sub/\.\./first\.yaml' makes a cycle: .*first\.yaml"):
        load_yaml(first)
    itself = write(tmp_path / "itself.yaml", "base: itself.yaml\n")
    with pytest.raises(ConfigError, match=r"itself\.yaml: base 'itself\.yaml' makes a cycle"):
        load_yaml(itself)
    write(tmp_path / "fine.yaml", "a: 1\n")
    orphan = write(tmp_path / "orphan.yaml", "base: [fine.yaml, gone.yaml]\n")
    with pytest.raises(ConfigError, match=r"orphan\.yaml: base 'gone\.yaml' not found \(no file .*gone\.yaml\)"):
        load_yaml(orphan)
    for bad in ("base: 3", "base: []", "base: [a.yaml, {b: 1}]"):
        with pytest.raises(ConfigError, match=r"bad\.yaml: base must be a file path or a list of them"):
            load_yaml(write(tmp_path / "bad.yaml", bad))


def test_recipes_are_found_by_name_and_the_saved_config_is_the_resolved_one(tmp_path):
    """``recipes/<corpus>/<name>`` resolves inside the shipped configs; what a run writes as out_dir/config.yaml (the
    trainer saves ``cfg.as_recorded()`` with :func:`save_yaml`) holds every setting and no ``base``, and reads back as
    the same configuration."""
    path = resolve_config_path("recipes/librispeech/conformer-384")
    assert path == CONFIG_DIR / "recipes" / "librispeech" / "conformer-384.yaml"
    assert "base" in yaml.safe_load(path.read_text())
    cfg = load_run_config("recipes/librispeech/conformer-384", [f"out_dir={tmp_path / 'run'}"])
    assert (cfg.model.encoder.d_model, cfg.data.corpus, cfg.dmao.score.interval) == (384, "librispeech", 1000)
    save_yaml(cfg.as_recorded(), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and saved["model"]["encoder"]["block_type"] == "conformer"
    assert from_dict(RunConfig, load_yaml(tmp_path / "config.yaml")) == cfg.as_recorded()


def test_a_mistyped_recipe_name_gets_the_closest_shipped_one():
    from dmao.training.config import resolve_config_path

    with pytest.raises(ConfigError, match="did you mean recipes/librispeech-100/conformer-384"):
        resolve_config_path("recipes/librispeech100/conformer-384")
