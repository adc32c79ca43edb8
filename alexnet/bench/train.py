"""``python -m alexnet.bench train``: images/s of the training step.

Times the real training step (``engine.train_one_epoch``: forward, loss, backward, the
optimiser's update) on synthetic input already on the device, and, given ``--data``, on
batches from the prepared data set through the configured loader. ``--compare torchvision``
adds ``torchvision.models.alexnet``, ``--compare no_lrn`` the configured net without LRN and
``--compare former_lrn`` the configured net with the former ``F.local_response_norm`` LRN,
each built with the same runtime (batch, dtype, memory format, compile setting) and optimiser,
whose learning rate is ``BENCH_LR``: tiny, so that no net's loss leaves the finite numbers over
the repeated batch (the step costs the same at any lr).
The nets take turns, round by round, in this one process; each one's median images/s over the
rounds and its ratio to torchvision's are printed. Warm-up steps (cuDNN autotuning,
torch.compile) run first and are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import cli
from alexnet import runtime as runtime_lib
from alexnet.atomic import write_json
from alexnet.bench.common import hardware, interleaved, synchronize
from alexnet.config import Config, input_size
from alexnet.data.packed import PackedSplit, load_stats
from alexnet.errors import UserError
from alexnet.model import PaperLRN, build_model
from alexnet.model.lrn import reference_lrn
from alexnet.runtime import Runtime
from alexnet.training.engine import EpochSpan, Hooks, NonFiniteLoss, train_one_epoch
from alexnet.training.optim import build_optimizer

CONFIGURED = "configured"  # the net the config describes
NETS = ("torchvision", "no_lrn", "former_lrn")  # what --compare can add
BENCH_LR = 1e-6  # the learning rate every timed net trains with (see build_candidate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    p.add_argument(
        "--data",
        action="store_true",
        help="also time real batches from data.root through data.loader (configured net)",
    )


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``bench train`` and ``bench eval`` share."""
    cli.add_config_options(p)
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        choices=NETS,
        help="also time torchvision's AlexNet / the configured net without LRN / with the "
        "former F.local_response_norm LRN (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per net (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


class FormerLRN(nn.Module):
    """An LRN layer computed the former way: its ReLU (if fused) as a separate op, then
    ``F.local_response_norm`` per group with autograd through every step (``reference_lrn``)."""

    def __init__(self, lrn: PaperLRN) -> None:
        super().__init__()
        self.lrn, self.relu = lrn, lrn.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.lrn
        alpha = m.alpha if m.alpha_semantics == "raw_sum" else m.alpha / m.size
        return reference_lrn(F.relu(x) if m.relu else x, m.size, alpha, m.beta, m.k, m.groups)


@dataclasses.dataclass
class Candidate:
    """One net to time: its execution form, its optimiser and the runtime it runs in."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    rt: Runtime
    name: str = CONFIGURED


def build_candidate(name: str, cfg: Config, rt: Runtime) -> Candidate:
    """The configured net, ``no_lrn`` or ``torchvision``, wrapped by ``rt`` like a training run.

    torchvision's net has no towers: under ``parallel.mode=two_device`` it runs on the first
    device alone.
    """
    torch.manual_seed(cfg.train.seed)
    if name == "torchvision":
        import torchvision

        model: nn.Module = torchvision.models.alexnet(num_classes=cfg.model.num_classes)
        if len(rt.devices) == 2:
            rt = dataclasses.replace(rt, mode="single", devices=rt.devices[:1])
    elif name == "no_lrn":
        lrn = dataclasses.replace(cfg.model.lrn, enabled=False)
        model = build_model(dataclasses.replace(cfg.model, lrn=lrn))
    else:
        model = build_model(cfg.model)
    if name == "former_lrn":
        for layer in ("lrn1", "lrn2"):
            if isinstance(getattr(model, layer), PaperLRN):
                setattr(model, layer, FormerLRN(getattr(model, layer)))
    module = rt.wrap(model)
    # The step's cost does not depend on the lr's value, but its numbers do: the paper's lr on
    # one batch seen again and again drove a net to NaN after a few steps (batch 128 on an
    # H200). A tiny lr keeps every net finite for any number of steps at the same cost.
    optim = dataclasses.replace(cfg.optim, lr=BENCH_LR)
    optimizer = build_optimizer(runtime_lib.unwrap(module), optim)
    return Candidate(module, optimizer, rt, name)


def train_rate(c: Candidate, batches: Iterator, steps: int) -> float:
    """Images/s of ``steps`` training steps, the clock stopped once the devices are done."""
    span = EpochSpan(0, 0, steps, 0, log_every=steps, checkpoint_every=0)
    synchronize(c.rt.devices)
    start = time.perf_counter()
    batches = itertools.islice(batches, steps)
    try:
        result = train_one_epoch(
            c.module, batches, c.optimizer, c.rt, span, Hooks(), show_progress=False
        )
    except NonFiniteLoss as err:
        raise UserError(f"{c.name}: {err} (with lr {BENCH_LR:g})") from None
    synchronize(c.rt.devices)
    return result.images / (time.perf_counter() - start)


def synthetic_batches(cfg: Config, device: torch.device) -> Iterator:
    """One fixed batch on the device, repeated: the data pipeline costs nothing."""
    size, b = input_size(cfg.model), cfg.train.batch_size
    images = (torch.rand(b, 3, size, size, device=device) - 0.5) * 200  # about mean-free 0-255
    labels = torch.randint(0, cfg.model.num_classes, (b,), device=device)
    return itertools.repeat((images, labels))


def real_batches(cfg: Config, device: torch.device) -> Iterator:
    from alexnet.data.loaders import TrainLoader

    split = PackedSplit(cfg.data.root, cfg.data.train_split)
    stats, at = load_stats(cfg.data.root), runtime_lib.Placement(device)
    loader = TrainLoader(split, stats, cfg.data, cfg.augment, cfg.train, cfg.model, at)
    return itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())


def settings(cfg: Config) -> str:
    """The settings every compared net shares, in one line."""
    rt = cfg.runtime
    return (
        f"model {cfg.model.arch}, {cfg.parallel.mode}, batch {cfg.train.batch_size}, "
        f"{rt.dtype} (eval {rt.eval_dtype}), channels_last={rt.channels_last}, "
        f"compile={rt.compile} ({rt.compile_mode}), optimiser {cfg.optim.momentum_semantics} "
        f"(lr {BENCH_LR:g})"
    )


def check_counts(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        raise UserError("--steps and --rounds must be >= 1, --warmup >= 0")


def report(
    what: str, rates: dict[str, list[float]], args: argparse.Namespace, cfg: Config
) -> dict[str, object]:
    """Print each net's median images/s (and ratio to torchvision); the figures as a dict."""
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians.get("torchvision")
    print(f"{what}: {args.rounds} interleaved rounds of {args.steps} batches per net")
    print(f"{'net':<12} {'images/s':>10} {'slowest':>10} {'fastest':>10} {'vs torchvision':>15}")
    for name, r in rates.items():
        ratio = f"{medians[name] / base:.2f}x" if base else "-"
        print(f"{name:<12} {medians[name]:>10.1f} {min(r):>10.1f} {max(r):>10.1f} {ratio:>15}")
    ratios = {n: m / base for n, m in medians.items()} if base else {}
    out = {"what": what, "hardware": hardware(), "settings": settings(cfg), "rounds": rates}
    out.update(median=medians, ratio_to_torchvision=ratios)
    return out


def run(args: argparse.Namespace) -> int:
    check_counts(args)
    cfg = cli.config_from_args(args)
    rt = runtime_lib.setup(cfg.parallel, cfg.runtime)
    print(hardware())
    print(settings(cfg))
    nets = {name: build_candidate(name, cfg, rt) for name in [CONFIGURED, *args.compare]}
    batches = synthetic_batches(cfg, rt.device)
    for net in nets.values():
        if args.warmup:
            train_rate(net, batches, args.warmup)
    timed = {n: functools.partial(train_rate, net, batches, args.steps) for n, net in nets.items()}
    figures = report("training step, synthetic input", interleaved(timed, args.rounds), args, cfg)
    if args.data:
        net = nets[CONFIGURED]
        data = real_batches(cfg, rt.device)
        train_rate(net, data, max(args.warmup, 1))
        rate = statistics.median(train_rate(net, data, args.steps) for _ in range(args.rounds))
        print(f"training step, {cfg.data.loader} loader on {cfg.data.root}: {rate:.1f} images/s")
        figures["real_data"] = rate
    if args.json:
        write_json(args.json, figures)
    return 0
