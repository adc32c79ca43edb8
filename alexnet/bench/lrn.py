"""``python -m alexnet.bench lrn``: the LRN ops' kernels against their memory-traffic floor.

For each ``--shape`` (default: LRN1 and LRN2 of the paper at batch 32, 32x96x55x55 and
32x256x27x27), timed round by round, interleaved, the paper's constants and two towers:

- kernels, the ReLU fused in as the model runs them: the ``alexnet::lrn`` op's forward and
  backward, the fused ReLU + LRN + 3x3/2 max-pool op ``alexnet::lrn_pool``'s forward and
  backward, and forward + backward of the pair the fused op replaces (LRN op, then
  ``F.max_pool2d``) against the fused op's;
- implementations, forward + backward: the former ``F.local_response_norm`` implementation
  (``lrn.reference_lrn``, autograd through every intermediate) against the LRN op on the same
  post-ReLU input, then ``F.relu`` followed by the former LRN against the op with the ReLU fused.

Each figure is printed beside its traffic floor: the bytes the operation must move at least
(each input read once, each output written once; E elements of x, P of the pooled maps, b bytes
each: LRN forward 2Eb, backward 3Eb; LRN + pool forward (E + P)b, backward (2E + P)b; the saved
int8 argmax is not counted) over the memory bandwidth, measured by copying a 256 MiB tensor
(read + write) unless ``--bandwidth`` gives it, and the ratio time / floor.

``--json FILE`` writes: ``hardware``; ``shape`` (the first shape) and ``shapes``; ``bandwidth_GBps``
and ``bandwidth_source`` (``measured copy`` or ``--bandwidth``); ``nominal_bandwidth_GBps`` (a
CUDA device's 2 x memory clock x bus width, or null); per run name, ``ms`` (every round),
``median`` (ms), ``floor_ms`` and ``floor_ratio``. With several shapes each name ends in
`` [CxHxW]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet import paper
from alexnet.atomic import write_json
from alexnet.bench.common import hardware, interleaved, synchronize
from alexnet.errors import UserError
from alexnet.model.lrn import lrn, reference_lrn
from alexnet.model.lrn_pool import lrn_pool

DEFAULT_SHAPES = ("32,96,55,55", "32,256,27,27")  # LRN1 and LRN2 at batch 32
COPY_BYTES = 256 << 20  # the bandwidth probe: far beyond any cache
POOL = (paper.POOL_SIZE, paper.POOL_STRIDE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        action="append",
        help="N,C,H,W of the input (repeatable; default LRN1 and LRN2 at batch 32: "
        + " and ".join(DEFAULT_SHAPES)
        + ")",
    )
    p.add_argument("--groups", type=int, default=paper.TOWERS, help="towers (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--channels-last", action="store_true", help="NHWC input")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument(
        "--bandwidth", type=float, metavar="GB/s", help="memory bandwidth (default: measured)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


class Run(NamedTuple):
    """One timed thing: milliseconds per call, and the bytes it must move at least."""

    time_ms: Callable[[], float]
    floor_bytes: int
    baseline: str | None = None  # the run its speed-up is against (implementations)


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of ``fn``, the device's queued work included."""
    synchronize([device])
    start = time.perf_counter()
    fn()
    synchronize([device])
    return (time.perf_counter() - start) * 1000


def fwd_bwd_ms(fn: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor) -> float:
    """Milliseconds of one forward and backward of ``fn`` at ``x``."""
    x = x.detach().requires_grad_()
    return timed_ms(lambda: fn(x).backward(grad), x.device)


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of ``dst.copy_(src)`` for a 256 MiB tensor, counting its read and its write."""
    src = torch.ones(COPY_BYTES // 4, device=device)
    dst = torch.empty_like(src)
    ms = [timed_ms(lambda: dst.copy_(src), device) for _ in range(6)][1:]  # the first: warm-up
    return 2 * COPY_BYTES / statistics.median(ms) / 1e6


def nominal_bandwidth(device: torch.device) -> float | None:
    """A CUDA device's double-data-rate peak from its properties (GB/s), where it reports one."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = (getattr(props, a, 0) for a in ("memory_clock_rate", "memory_bus_width"))
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def kernel_runs(x: Tensor, groups: int) -> dict[str, Run]:
    """The LRN op's and the fused LRN + pool op's kernels, ReLU fused, and the pair against
    the fused op; forward and backward apart, then together."""
    lrn_args = (paper.LRN_SIZE, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K, groups)
    pool_args = (*lrn_args, "input", *POOL)
    y, argmax = torch.ops.alexnet.lrn_pool(x, *pool_args)
    grad, pooled_grad = torch.randn_like(x), torch.randn_like(y)
    e, p, b = x.numel(), y.numel(), x.element_size()
    ops, device = torch.ops.alexnet, x.device

    def pair(t: Tensor) -> Tensor:
        return F.max_pool2d(lrn(t, *lrn_args, relu=True), *POOL)

    def fused(t: Tensor) -> Tensor:
        return lrn_pool(t, *pool_args)

    with_grad = functools.partial(fwd_bwd_ms, x=x, grad=pooled_grad)
    return {
        "LRN op fwd": Run(lambda: timed_ms(lambda: ops.lrn(x, *lrn_args, True), device), 2 * e * b),
        "LRN op bwd": Run(
            lambda: timed_ms(lambda: ops.lrn_backward(grad, x, *lrn_args, True), device), 3 * e * b
        ),
        "LRN+pool op fwd": Run(lambda: timed_ms(lambda: fused(x), device), (e + p) * b),
        "LRN+pool op bwd": Run(
            lambda: timed_ms(
                lambda: ops.lrn_pool_backward(pooled_grad, x, argmax, *pool_args), device
            ),
            (2 * e + p) * b,
        ),
        "LRN op + max-pool": Run(lambda: with_grad(pair), (3 * e + 2 * p) * b),
        "LRN+pool op": Run(lambda: with_grad(fused), (3 * e + 2 * p) * b, "LRN op + max-pool"),
    }


def implementation_runs(x: Tensor, groups: int) -> dict[str, Run]:
    """Forward + backward of the former LRN and the op, post-ReLU input; then with the ReLU."""
    constants = (paper.LRN_SIZE, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K, groups)
    grad, post_relu = torch.randn_like(x), x.relu()
    floor = 5 * x.numel() * x.element_size()  # forward 2, backward 3 tensors of x's size
    fns = {
        "former LRN": (lambda t: reference_lrn(t, *constants), post_relu, None),
        "LRN op": (lambda t: lrn(t, *constants), post_relu, "former LRN"),
        "ReLU + former LRN": (lambda t: reference_lrn(F.relu(t), *constants), x, None),
        "LRN op, ReLU fused": (lambda t: lrn(t, *constants, relu=True), x, "ReLU + former LRN"),
    }
    return {
        name: Run(functools.partial(fwd_bwd_ms, fn, inp, grad), floor, baseline)
        for name, (fn, inp, baseline) in fns.items()
    }


def parse(args: argparse.Namespace) -> tuple[list[tuple[int, ...]], torch.device]:
    try:
        shapes = [tuple(int(s) for s in text.split(",")) for text in args.shape or DEFAULT_SHAPES]
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"--shape N,C,H,W and --device cpu|cuda: {err}") from None
    for shape in shapes:
        if len(shape) != 4 or shape[1] % args.groups or min(shape[2:]) < paper.POOL_SIZE:
            raise UserError(
                "--shape needs 4 sizes, C divisible by --groups and maps of 3 or more; "
                f"got {','.join(map(str, shape))}"
            )
    if args.rounds < 1 or (args.bandwidth is not None and args.bandwidth <= 0):
        raise UserError("--rounds must be >= 1 and --bandwidth > 0")
    return shapes, device


def measure(runs: dict[str, Run], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds of every run that works here (after one warm-up call each)."""
    calls = {}
    for name, r in runs.items():
        try:
            r.time_ms()  # warm-up: allocator, Triton compilation
            calls[name] = r.time_ms
        except (NotImplementedError, RuntimeError) as err:  # avg_pool3d: no bf16 on the CPU
            print(f"{name}: not run ({str(err).splitlines()[0]})")
    return interleaved(calls, rounds)


def print_table(
    title: str, runs: dict[str, Run], medians: dict[str, float], floors: dict[str, float]
) -> None:
    print(f"{title:<20} {'ms':>9} {'speed-up':>9} {'floor ms':>9} {'x floor':>8}")
    for name, value in medians.items():
        base = runs[name].baseline
        speedup = f"{medians[base] / value:.2f}x" if base in medians else ""
        ratio = f"{value / floors[name]:.1f}x"
        print(f"{name:<20} {value:>9.2f} {speedup:>9} {floors[name]:>9.3f} {ratio:>8}")


def run(args: argparse.Namespace) -> int:
    shapes, device = parse(args)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dtype = getattr(torch, args.dtype)
    gbps = args.bandwidth or copy_bandwidth(device)
    source = "--bandwidth" if args.bandwidth else "measured copy"
    nominal = nominal_bandwidth(device)
    print(hardware())
    print(
        f"memory bandwidth {gbps:.1f} GB/s ({source}"
        + (f"; nominal {nominal:.0f} GB/s" if nominal else "")
        + "): floor = the bytes each op must move / bandwidth"
    )
    out: dict[str, dict[str, object]] = {k: {} for k in ("ms", "median", "floor_ms", "floor_ratio")}
    for shape in shapes:
        x = (torch.randn(shape, device=device) * 30).to(dtype).contiguous(memory_format=fmt)
        suffix = f" [{'x'.join(map(str, shape[1:]))}]" if len(shapes) > 1 else ""
        print(
            f"\n{'x'.join(map(str, shape))} {args.dtype} on {device}"
            f"{' (channels_last)' if args.channels_last else ''}, {args.groups} groups, "
            f"median of {args.rounds} interleaved rounds"
        )
        for title, runs in (
            ("kernel", kernel_runs(x, args.groups)),
            ("implementation", implementation_runs(x, args.groups)),
        ):
            ms = measure(runs, args.rounds)
            medians = {name: statistics.median(t) for name, t in ms.items()}
            floors = {name: runs[name].floor_bytes / gbps / 1e6 for name in medians}
            print_table(title, runs, medians, floors)
            for name in medians:
                key = name + suffix
                out["ms"][key], out["median"][key] = ms[name], medians[name]
                out["floor_ms"][key] = floors[name]
                out["floor_ratio"][key] = medians[name] / floors[name]
    if args.json:
        meta = {"hardware": hardware(), "shape": shapes[0], "shapes": shapes}
        meta.update(bandwidth_GBps=gbps, bandwidth_source=source, nominal_bandwidth_GBps=nominal)
        write_json(args.json, {**meta, **out})
    return 0
