"""``python -m alexnet.bench train``: images/s of the training step.

Times the real training step (``engine.train_one_epoch``: forward, loss, backward, the
optimiser's update) on synthetic input already on the device, and, given ``--data``, on
batches from the prepared data set through the configured loader. Warm-up steps (cuDNN
autotuning, torch.compile) are run first and not counted.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator

import torch

from alexnet import runtime as runtime_lib
from alexnet.bench.common import hardware
from alexnet.config import Config, input_size, load_config
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.engine import EpochPlan, Hooks, train_one_epoch
from alexnet.model import build_model
from alexnet.optim import build_optimizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the paper's recipe)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. runtime.dtype=bfloat16 (repeatable)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--data",
        action="store_true",
        help="also time real batches from data.root through data.loader",
    )


def measure(cfg: Config, batches: Iterator, steps: int, warmup: int) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` untimed ones."""
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    torch.manual_seed(cfg.train.seed)
    module = rt.wrap(build_model(cfg.model))
    optimizer = build_optimizer(runtime_lib.unwrap(module), cfg.optim)
    rates = []
    for n in (warmup, steps):
        plan = EpochPlan(0, 0, n, 0, log_every=n, checkpoint_every=0)
        result = train_one_epoch(
            module, itertools.islice(batches, n), optimizer, rt, plan, Hooks(), show_progress=False
        )
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(result["images"] / result["seconds"])
    return rates[-1]


def synthetic_batches(cfg: Config, device: torch.device) -> Iterator:
    """One fixed batch on the device, repeated: the data pipeline costs nothing."""
    size, b = input_size(cfg.model), cfg.train.batch_size
    images = (torch.rand(b, 3, size, size, device=device) - 0.5) * 200  # about mean-free 0-255
    labels = torch.randint(0, cfg.model.num_classes, (b,), device=device)
    return itertools.repeat((images, labels))


def real_batches(cfg: Config, device: torch.device) -> Iterator:
    from alexnet.data.loaders import TrainLoader

    split = PackedSplit(cfg.data.root, cfg.data.train_split)
    loader = TrainLoader(
        split,
        load_stats(cfg.data.root),
        data=cfg.data,
        augment=cfg.augment,
        input_size=input_size(cfg.model),
        batch_size=cfg.train.batch_size,
        device=device,
        seed=cfg.train.seed,
    )
    return itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    device = runtime_lib.setup(cfg.parallel, cfg.runtime).device
    print(hardware())
    print(
        f"model {cfg.model.arch}, {cfg.parallel.mode}, batch {cfg.train.batch_size}, "
        f"{cfg.runtime.dtype}, channels_last={cfg.runtime.channels_last}, "
        f"compile={cfg.runtime.compile}, optimiser {cfg.optim.momentum_semantics}"
    )
    rate = measure(cfg, synthetic_batches(cfg, device), args.steps, args.warmup)
    print(f"training step, synthetic input: {rate:10.1f} images/s")
    if args.data:
        rate = measure(cfg, real_batches(cfg, device), args.steps, args.warmup)
        print(f"training step, {cfg.data.loader} loader on {cfg.data.root}: {rate:10.1f} images/s")
    return 0
