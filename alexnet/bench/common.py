"""What every benchmark shares: a one-line description of the hardware its figures came from,
and interleaved timing."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping

import torch

from alexnet.runtime import available_cpus


def hardware() -> str:
    """One line naming the CPUs, the torch versions and the GPU."""
    import torchvision

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
            model = next(names, model)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{available_cpus()} CPUs ({model}), torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, GPU: {gpu}"
    )


def synchronize(devices: Iterable[torch.device]) -> None:
    """Wait for the queued work of every CUDA device in ``devices`` (a no-op for the CPU)."""
    for device in set(devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every run once per round, in turn, for ``rounds`` rounds; each run's results.

    Taking turns spreads a busy machine's slow spells over all candidates alike, so ratios of
    medians stay meaningful where absolute figures drift.
    """
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return results
