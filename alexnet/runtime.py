"""The one place for devices, precision and distribution.

``setup(parallel, runtime)`` resolves the devices, starts torch.distributed when the run was
launched by ``torchrun`` (``parallel.mode=ddp``) and returns a frozen ``Runtime``. Its methods
wrap the canonical ``AlexNet`` into the execution form (single device, the paper's two towers
on two devices, DDP, torch.compile) and unwrap it again for checkpoints. The model and the
transforms never move tensors themselves.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from alexnet.config import ParallelConfig, RuntimeConfig
from alexnet.errors import UserError


@dataclass(frozen=True)
class Placement:
    """Where a loader delivers its batches: the device, and this process's share of them."""

    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes."""

    mode: str  # single | two_device | ddp
    devices: tuple[torch.device, ...]  # one device, or tower A's and tower B's
    rank: int = 0
    world_size: int = 1
    dtype: torch.dtype | None = None  # autocast dtype; None = full fp32
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode (reduce-overhead: CUDA graphs)
    eval_dtype: torch.dtype | None = None  # evaluation's autocast dtype; None = full fp32
    tower_conv: str = "auto"  # the form of the tower-local convs (alexnet.model.tower_conv)

    @property
    def device(self) -> torch.device:
        """The device that receives the input batch and holds the logits."""
        return self.devices[0]

    @property
    def placement(self) -> Placement:
        """Where this process's loaders deliver (the input device, its rank)."""
        return Placement(self.device, self.rank, self.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self, evaluation: bool = False) -> contextlib.AbstractContextManager:
        """bf16 autocast when asked for (``evaluation``: ``eval_dtype``'s), else a no-op: one
        code path either way."""
        dtype = self.eval_dtype if evaluation else self.dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the memory format to an input batch already on ``self.device``."""
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def wrap(self, model: nn.Module) -> nn.Module:
        """The execution form of a canonical ``AlexNet``: placed, maybe two-tower, DDP, compiled."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        if len(self.devices) == 2:
            from alexnet.model.towers import TwoDeviceAlexNet

            module: nn.Module = TwoDeviceAlexNet.from_model(model, self.devices)
            module = module.to(memory_format=fmt)
        else:
            module = model.to(self.device, memory_format=fmt)
        if self.mode == "ddp":
            ids = [self.device] if self.device.type == "cuda" and len(self.devices) == 1 else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.compile:
            module = torch.compile(
                module, mode=None if self.compile_mode == "default" else self.compile_mode
            )
        from alexnet.model.tower_conv import set_tower_conv_form

        set_tower_conv_form(model, self.tower_conv, self.device, module if self.compile else None)
        return module

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def unwrap(module: nn.Module) -> nn.Module:
    """Strip torch.compile and DDP wrappers (their key prefixes never reach a checkpoint)."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def canonical_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The single-device ``AlexNet`` state dict on the CPU, whatever the execution form."""
    inner = unwrap(module)
    state = (
        inner.canonical_state_dict()
        if hasattr(inner, "canonical_state_dict")
        else inner.state_dict()
    )
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_canonical_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    inner = unwrap(module)
    if hasattr(inner, "load_canonical_state_dict"):
        inner.load_canonical_state_dict(state)
    else:
        inner.load_state_dict(state)


def setup(parallel: ParallelConfig, runtime: RuntimeConfig) -> Runtime:
    """Resolve devices, start the process group for DDP, set precision and determinism flags."""
    rank, world = 0, 1
    if parallel.mode == "ddp":
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise UserError(
                "parallel.mode=ddp must be launched by torchrun, e.g. "
                "`torchrun --nproc_per_node=2 -m alexnet.train --config ...`"
            )
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    devices = _resolve_devices(parallel, int(os.environ.get("LOCAL_RANK", 0)))
    if parallel.mode == "ddp" and not dist.is_initialized():
        backend = parallel.backend
        if backend == "auto":
            backend = "nccl" if devices[0].type == "cuda" else "gloo"
        if devices[0].type == "cuda":
            torch.cuda.set_device(devices[0])
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    torch.backends.cudnn.benchmark = not runtime.deterministic
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if devices[0].type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the paper's precision)
        torch.backends.cudnn.allow_tf32 = False
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}
    dtype = dtypes[runtime.dtype]
    return Runtime(
        parallel.mode,
        devices,
        rank,
        world,
        dtype,
        runtime.channels_last,
        runtime.compile,
        runtime.compile_mode,
        dtype if runtime.eval_dtype == "same" else dtypes[runtime.eval_dtype],
        runtime.tower_conv,
    )


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(requested: int | None) -> int:
    """Loader worker processes: ``requested``, or for None the machine's cores, at most 8."""
    return min(8, available_cpus()) if requested is None else requested


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _resolve_devices(parallel: ParallelConfig, local_rank: int) -> tuple[torch.device, ...]:
    wanted = 2 if parallel.mode == "two_device" or parallel.two_device_per_process else 1
    names = list(parallel.devices)
    first = local_rank * wanted if parallel.mode == "ddp" else 0  # this process's first device
    if not names:
        gpus = torch.cuda.device_count()
        if gpus == 0:
            names = ["cpu"] * wanted
        elif first + wanted <= gpus:
            names = [f"cuda:{first + i}" for i in range(wanted)]
        else:
            raise UserError(
                f"this process needs GPUs {first}..{first + wanted - 1} but {gpus} are visible; "
                "use fewer processes or parallel.mode=single, or parallel.devices=[cpu, cpu] to "
                "test on the CPU"
            )
    elif parallel.mode == "ddp" and len(names) > 1:  # this local process's share of the list
        names = [names[(first + i) % len(names)] for i in range(wanted)]
    try:
        devices = tuple(torch.device(n) for n in names[:wanted])
    except RuntimeError as err:
        raise UserError(f"parallel.devices: {err}") from None
    for d in devices:
        if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
            raise UserError(
                f"parallel.devices: {d} is not available ({torch.cuda.device_count()} GPUs)"
            )
    if len(devices) != wanted:
        raise UserError(f"parallel.mode={parallel.mode} needs {wanted} devices, got {names}")
    return devices


@contextlib.contextmanager
def main_process_first(rt: Runtime) -> Iterator[None]:
    """Let rank 0 do one-off work (e.g. creating the run folder) before the other ranks."""
    if not rt.is_main:
        rt.barrier()
    yield
    if rt.is_main:
        rt.barrier()
