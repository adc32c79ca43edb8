"""``python -m alexnet.bench lrn``: the LRN op against the former implementation.

Times forward + backward of one tensor, interleaved round by round: the former
``F.local_response_norm`` implementation (``lrn.reference_lrn``, autograd through every
intermediate) and the ``alexnet::lrn`` op, both on the same post-ReLU input; then the
ReLU + LRN pair as the model runs it: ``F.relu`` followed by the former LRN, against the op
with the ReLU fused in. The paper's constants and two towers unless told otherwise.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alexnet import paper
from alexnet.atomic import write_json
from alexnet.bench.common import hardware, interleaved, synchronize
from alexnet.errors import UserError
from alexnet.model.lrn import lrn, reference_lrn


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        default="32,96,55,55",
        help="N,C,H,W of the input (default 32,96,55,55: LRN1 at batch 32)",
    )
    p.add_argument("--groups", type=int, default=paper.TOWERS, help="towers (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--channels-last", action="store_true", help="NHWC input")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


def fwd_bwd_ms(fn: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor) -> float:
    """Milliseconds of one forward and backward of ``fn`` at ``x``."""
    x = x.detach().requires_grad_()
    synchronize([x.device])
    start = time.perf_counter()
    fn(x).backward(grad)
    synchronize([x.device])
    return (time.perf_counter() - start) * 1000


def run(args: argparse.Namespace) -> int:
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
        device = torch.device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"--shape N,C,H,W and --device cpu|cuda: {err}") from None
    if len(shape) != 4 or shape[1] % args.groups or args.rounds < 1:
        raise UserError(f"--shape needs 4 sizes, C divisible by --groups; got {args.shape}")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dtype = getattr(torch, args.dtype)
    x = (torch.randn(shape, device=device) * 30).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn_like(x)
    constants = (paper.LRN_SIZE, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K, args.groups)
    old = functools.partial(
        reference_lrn,
        size=paper.LRN_SIZE,
        alpha=paper.LRN_ALPHA,
        beta=paper.LRN_BETA,
        k=paper.LRN_K,
        groups=args.groups,
    )
    runs = {
        "former LRN": lambda t: old(t),
        "LRN op": lambda t: lrn(t, *constants),
        "ReLU + former LRN": lambda t: old(F.relu(t)),
        "LRN op, ReLU fused": lambda t: lrn(t, *constants, relu=True),
    }
    inputs = {name: x.relu() if "ReLU" not in name else x for name in runs}
    timed = {n: functools.partial(fwd_bwd_ms, fn, inputs[n], grad) for n, fn in runs.items()}
    print(hardware())
    print(
        f"forward + backward of a {'x'.join(map(str, shape))} {args.dtype} tensor on {device}"
        f"{' (channels_last)' if args.channels_last else ''}, {args.groups} groups, "
        f"median of {args.rounds} interleaved rounds"
    )
    for name, fn in list(timed.items()):
        try:
            fn()  # warm-up: allocator, Triton compilation
        except (NotImplementedError, RuntimeError) as err:  # avg_pool3d: no bf16 on the CPU
            print(f"{name}: not run ({str(err).splitlines()[0]})")
            del timed[name]
    ms = interleaved(timed, args.rounds)
    medians = {name: statistics.median(t) for name, t in ms.items()}
    pairs = {"LRN op": "former LRN", "LRN op, ReLU fused": "ReLU + former LRN"}
    print(f"{'implementation':<20} {'ms':>9} {'speed-up':>9}")
    for name, value in medians.items():
        speedup = f"{medians[pairs[name]] / value:.2f}x" if pairs.get(name) in medians else ""
        print(f"{name:<20} {value:>9.2f} {speedup:>9}")
    if args.json:
        write_json(args.json, {"hardware": hardware(), "shape": shape, "ms": ms, "median": medians})
    return 0
