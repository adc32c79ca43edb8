"""What every benchmark shares: a one-line description of the hardware its figures came from."""

from __future__ import annotations

import platform

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
