"""Every documented command answers ``--help`` with a description and examples."""

from __future__ import annotations

import importlib

import pytest

# python -m alexnet.<name>: the module whose main(argv) runs it
COMMANDS = {
    "train": "alexnet.train",
    "eval": "alexnet.eval",
    "prepare": "alexnet.prepare",
    "synthetic": "alexnet.synthetic",
    "model": "alexnet.model.__main__",
    "bench": "alexnet.bench.__main__",
    "figures": "alexnet.figures.__main__",
    "finetune": "alexnet.finetune",
    "predict": "alexnet.predict",
    "features": "alexnet.features",
    "export": "alexnet.export",
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_answers_with_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = importlib.import_module(COMMANDS[name]).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert f"python -m alexnet.{name}" in out and "example" in out


def test_installed_scripts_are_the_commands() -> None:
    """``[project.scripts]`` names every command, each as ``alexnet-<name>`` -> its main."""
    from conftest import ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"alexnet-{name}": f"{module}:main" for name, module in COMMANDS.items()}
