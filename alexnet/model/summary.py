"""The layer table: output shape, parameters and multiply-adds of each layer, measured by a
forward pass with hooks (``python -m alexnet.model`` prints it)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from alexnet.model.layers import PaperLRN


class SummaryRow(NamedTuple):
    name: str
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int
    macs: int  # multiply-adds per image


def _record(rows: list[SummaryRow], name: str, module: nn.Module, _: Any, out: Tensor) -> None:
    macs = 0
    if isinstance(module, nn.Conv2d):  # each output element: in/groups x kh x kw products
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        macs = out[0].numel() * per_output
    elif isinstance(module, nn.Linear):
        macs = module.in_features * module.out_features
    params = sum(p.numel() for p in module.parameters())
    rows.append(SummaryRow(name, tuple(out.shape[1:]), params, macs))


def summarize(model: nn.Module, input_size: int) -> list[SummaryRow]:
    """One row per conv, LRN, pooling and fc layer, in execution order, from a real forward pass."""
    rows: list[SummaryRow] = []
    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, PaperLRN)
    handles = [
        m.register_forward_hook(functools.partial(_record, rows, n))
        for n, m in model.named_children()
        if isinstance(m, kinds)
    ]
    was_training = model.training
    try:
        model.eval()  # no dropout draws, so the caller's random stream is untouched
        with torch.no_grad():
            model(next(model.parameters()).new_zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def format_summary(rows: list[SummaryRow], total_params: int, size: int) -> str:
    """The rows as an aligned text table, with totals."""
    table = [("layer", "output", "params", "mult-adds"), ("input", f"3x{size}x{size}", "", "")]
    for r in rows:
        table.append((r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}"))
    table.append(("total", "", f"{total_params:,}", f"{sum(r.macs for r in rows):,}"))
    w = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}".rstrip() for a, b, c, d in table]
    rule = "-" * max(map(len, lines))
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])
