"""Shared fixtures and markers. Every default test runs on CPU with generated or shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpus = torch.cuda.device_count()
    for item in items:
        if "cuda" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "two_gpus" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason="needs two CUDA GPUs"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in generated data set, tiny (4 classes x 12 train / 4 val), prepared once."""
    from alexnet import prepare
    from alexnet.data import synthetic

    base = tmp_path_factory.mktemp("tiny")
    synthetic.make_synthetic(
        base / "src", num_classes=4, train_per_class=12, val_per_class=4, seed=0
    )
    assert prepare.main([str(base / "src"), str(base / "prepared"), "--workers", "1"]) == 0
    return base / "prepared"
