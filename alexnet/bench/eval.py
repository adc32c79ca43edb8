"""``python -m alexnet.bench eval``: images/s of evaluation, ten views per image by default.

Times ``engine.evaluate`` (under ``torch.inference_mode``, in ``runtime.eval_dtype``, with the
runtime's memory format) on synthetic views already on the device: ``eval.batch_size`` images
of ``eval.views`` views each per batch, so the data pipeline costs nothing. ``--compare``
adds torchvision's AlexNet or the net without LRN, taking turns as in ``bench train``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
from collections.abc import Iterator

import torch

from alexnet import cli
from alexnet import runtime as runtime_lib
from alexnet.atomic import write_json
from alexnet.bench.common import hardware, interleaved, synchronize
from alexnet.bench.train import (
    CONFIGURED,
    Candidate,
    add_common_arguments,
    build_candidate,
    check_counts,
    report,
    settings,
)
from alexnet.config import Config, input_size
from alexnet.training.engine import evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--steps", type=int, default=3, help="timed batches per round (default 3)")


def synthetic_views(cfg: Config, device: torch.device) -> Iterator:
    """One fixed batch of (images, views, 3, S, S) and labels on the device, repeated."""
    size, n, v = input_size(cfg.model), cfg.eval.batch_size, cfg.eval.views
    views = (torch.rand(n, v, 3, size, size, device=device) - 0.5) * 200
    labels = torch.randint(0, cfg.model.num_classes, (n,), device=device)
    return itertools.repeat((views, labels))


def eval_rate(c: Candidate, batches: Iterator, steps: int, images: int) -> float:
    """Images/s of ``steps`` evaluation batches of ``images`` images each."""
    synchronize(c.rt.devices)
    start = time.perf_counter()
    evaluate(c.module, itertools.islice(batches, steps), c.rt, show_progress=False)
    synchronize(c.rt.devices)
    return steps * images / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    check_counts(args)
    cfg = cli.config_from_args(args)
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    print(hardware())
    print(f"{settings(cfg)}; eval batch {cfg.eval.batch_size} images x {cfg.eval.views} views")
    nets = {name: build_candidate(name, cfg, rt) for name in [CONFIGURED, *args.compare]}
    batches, n = synthetic_views(cfg, rt.device), cfg.eval.batch_size
    for net in nets.values():
        if args.warmup:
            eval_rate(net, batches, args.warmup, n)
    timed = {
        k: functools.partial(eval_rate, net, batches, args.steps, n) for k, net in nets.items()
    }
    what = f"evaluation, {cfg.eval.views} views per image, images/s"
    figures = report(what, interleaved(timed, args.rounds), args, cfg)
    if args.json:
        write_json(args.json, figures)
    return 0
