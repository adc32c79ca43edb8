"""The typed config: defaults are the paper's, every problem reported at once, YAML round-trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from alexnet.config import Config, ConfigError, dump_yaml, load_config, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def test_faithful_recipe_is_the_default() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/ilsvrc2012.yaml")
    assert cfg.model == Config().model and cfg.optim == Config().optim
    assert cfg.augment == Config().augment and cfg.schedule == Config().schedule


def test_yaml_1e3_string_quirk_is_accepted(tmp_path: Path) -> None:
    text = "optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n"
    assert yaml.safe_load(text)["optim"]["lr"] == "1e-3"  # the quirk itself
    cfg = load_config(write(tmp_path, text))
    assert cfg.optim.lr == pytest.approx(0.001) and cfg.optim.weight_decay == pytest.approx(5e-4)


def test_overrides_are_dotted_and_typed() -> None:
    cfg = load_config(None, ["model.lrn.k=1", "optim.lr=2e-2", "parallel.devices=[cpu, cpu]"])
    assert cfg.model.lrn.k == 1.0 and isinstance(cfg.model.lrn.k, float)
    assert cfg.optim.lr == 0.02 and cfg.parallel.devices == ("cpu", "cpu")
    cfg = load_config(None, ["model.init.weight_std.conv3=0.03", "optim.bias_weight_decay=0"])
    assert cfg.model.init.weight_std == {"conv3": 0.03} and cfg.optim.bias_weight_decay == 0.0


def test_all_problems_reported_at_once_with_suggestions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "optim:\n  lr: O.01\n  momentun: 0.9\nmodel:\n  lrn: {alpha_semantics: divided}\n"
        "train: {epochs: 0, val_views: 3}\nschedul: {}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, ["runtime.compile=1", "bad"])
    problems = info.value.problems
    text = str(info.value)
    assert len(problems) == 8, text
    assert str(path) in text
    assert "optim.lr: expected float, got str 'O.01'" in text
    assert "optim.momentun: unknown key (did you mean 'optim.momentum'?)" in text
    assert "did you mean 'divided_by_n'?" in text
    assert "schedul: unknown key (did you mean 'schedule'?)" in text
    assert "train.epochs: must be > 0, got 0" in text
    assert "train.val_views: expected one of 1, 10, got int 3" in text
    assert "runtime.compile: expected bool, got int 1" in text
    assert "override 'bad': expected KEY=VALUE" in text


def test_range_and_cross_section_checks() -> None:
    with pytest.raises(ConfigError, match="momentum: must be in"):
        load_config(None, ["optim.momentum=1.5"])
    with pytest.raises(ConfigError, match="two_device needs model.arch two_tower"):
        load_config(None, ["parallel.mode=two_device", "model.arch=owt"])
    with pytest.raises(ConfigError, match="unknown layer"):
        load_config(None, ["model.init.bias.fc9=1"])
    with pytest.raises(ConfigError, match="lrn.size: must be a positive odd number"):
        load_config(None, ["model.lrn.size=4"])


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_to_dict_is_plain_data() -> None:
    data = to_dict(load_config(None, ["parallel.devices=[cpu]"]))
    assert data["run"]["dir"] == "runs/ilsvrc2012" and data["parallel"]["devices"] == ["cpu"]
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    yaml.safe_dump(data)  # only plain types: safe_dump refuses anything else
