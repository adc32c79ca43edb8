"""Tower-local convolutions (conv2, conv4, conv5, conv6) in three mathematically identical forms.

The paper's towers (§3.2) make these layers grouped: each half of the outputs sees one half of
the inputs. Their parameter is always the grouped weight, (out, in / groups, k, k), so the state
dict and checkpoints do not depend on the form a layer runs in:

- ``grouped``: one grouped convolution (torch's own ``groups=2``); a new model's form.
- ``block_diagonal``: one dense convolution whose (out, in, k, k) weight is assembled inside the
  forward from the grouped parameter, zeros off the diagonal blocks. The zeros are constants, so
  autograd sends gradients to the grouped parameter only and the optimiser never sees the dense
  weight. Twice the multiply-adds, yet faster wherever the grouped kernels are slow: on an H200
  cuDNN's grouped kernels ran at ~40 % of the dense rate (issue 14).
- ``per_tower``: one convolution per tower on its channel slice, outputs concatenated (what Caffe
  did before cuDNN 7, and what ``towers.py`` does on two devices).

Products with the zero blocks are exact zeros, so for finite values the forms differ only in
summation order (an inf or NaN in one tower would reach the other through ``0 * inf``).

``set_tower_conv_form`` applies ``runtime.tower_conv``. Its ``auto`` is ``grouped`` on the CPU
(measured: there a grouped conv is as fast as two half-width ones) and on CUDA the fastest form
by measurement: forward + backward of each form at the layer's first input (shape, dtype, memory
format, autocast dtype), timed once per process (``choose_form``), cached and logged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.log import info

FORMS = ("grouped", "block_diagonal", "per_tower")
WARMUP, REPEATS = 2, 5  # untimed calls (cuDNN's autotuning), then the timed ones per form

_CHOSEN: dict[tuple, str] = {}  # auto's measured choice per layer geometry and input


class TowerConv2d(nn.Conv2d):
    """A grouped ``nn.Conv2d`` that runs in the form named by ``form`` (``FORMS`` or ``auto``).

    The parameters, their names and shapes are ``nn.Conv2d``'s with ``groups``; only the
    computation changes. ``auto`` measures at the first call (eager mode only; under
    ``torch.compile`` the form must already be chosen, see ``set_tower_conv_form``).
    """

    form: str = "grouped"

    def forward(self, x: Tensor) -> Tensor:
        if self.form == "auto":
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    "TowerConv2d form auto is measured in eager mode: call the module once "
                    "before torch.compile traces it (Runtime.wrap arranges this)"
                )
            self.form = choose_form(self, x)
        return run_form(self.form, self, x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form}"


def block_diagonal(weight: Tensor, groups: int) -> Tensor:
    """The dense (out, in, k, k) weight with the groups' kernels on the diagonal blocks and
    zeros elsewhere, built from ``weight`` (out, in / groups, k, k) by differentiable ops."""
    blocks = weight.chunk(groups, 0)
    zeros = weight.new_zeros(blocks[0].shape)
    row = [zeros] * groups
    return torch.cat([torch.cat(row[:i] + [b] + row[i + 1 :], 1) for i, b in enumerate(blocks)])


def run_form(form: str, conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv``'s convolution of ``x`` with ``weight`` and ``bias`` in the given form."""
    geometry = (conv.stride, conv.padding, conv.dilation)
    if form == "grouped":
        return F.conv2d(x, weight, bias, *geometry, conv.groups)
    if form == "block_diagonal":
        return F.conv2d(x, block_diagonal(weight, conv.groups), bias, *geometry, 1)
    if form == "per_tower":
        g = conv.groups
        biases = bias.chunk(g) if bias is not None else (None,) * g
        parts = zip(x.chunk(g, 1), weight.chunk(g), biases, strict=True)
        return torch.cat([F.conv2d(xi, wi, bi, *geometry, 1) for xi, wi, bi in parts], 1)
    raise ValueError(f"tower conv form: one of {', '.join(FORMS)}, got {form!r}")


def set_tower_conv_form(
    model: nn.Module, form: str, device: torch.device, compiled: nn.Module | None = None
) -> None:
    """Run every ``TowerConv2d`` of ``model`` in ``form`` (``FORMS`` or ``auto``).

    ``auto`` is ``grouped`` off CUDA and measured on CUDA at each layer's first call. A
    ``compiled`` wrapper of ``model`` (``torch.compile``) first runs ``model`` once in eager
    mode on its first input, without gradients, so the measurement happens before Dynamo
    traces the chosen forms.
    """
    if form not in (*FORMS, "auto"):
        raise ValueError(f"tower_conv: auto or one of {', '.join(FORMS)}, got {form!r}")
    if form == "auto" and device.type != "cuda":
        form = "grouped"
    layers = [m for m in model.modules() if isinstance(m, TowerConv2d)]
    for layer in layers:
        layer.form = form
    if form == "auto" and layers and compiled is not None:
        _measure_on_first_call(compiled, model)


def _measure_on_first_call(compiled: nn.Module, model: nn.Module) -> None:
    """A one-shot pre-hook on the compiled wrapper (it runs outside Dynamo's trace)."""

    def probe(_: nn.Module, args: tuple) -> None:
        handle.remove()
        was_training = model.training
        model.eval()  # no dropout draws: the caller's random stream stays untouched
        try:
            with torch.no_grad():  # the forms are timed inside, with gradients of their own
                model(*args)
        finally:
            model.train(was_training)

    handle = compiled.register_forward_pre_hook(probe)


def choose_form(conv: nn.Conv2d, x: Tensor) -> str:
    """The fastest form (forward + backward) for ``conv`` at inputs like ``x``; measured once
    per layer geometry and input kind in this process, then cached and logged."""
    key = _key(conv, x)
    if key not in _CHOSEN:
        ms = {form: _time_form(form, conv, x) for form in FORMS}
        _CHOSEN[key] = min(ms, key=ms.__getitem__)
        figures = ", ".join(f"{form} {t:.3f} ms" for form, t in ms.items())
        info(f"runtime.tower_conv auto: {_describe(key)}: {figures} -> {_CHOSEN[key]}")
    return _CHOSEN[key]


def _key(conv: nn.Conv2d, x: Tensor) -> tuple:
    autocast = torch.get_autocast_dtype(x.device.type)
    if not torch.is_autocast_enabled(x.device.type):
        autocast = None
    layer = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    tensor = (tuple(x.shape), x.dtype, _channels_last(x), str(x.device), autocast)
    return (*layer, conv.groups, *tensor)


def _channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _describe(key: tuple) -> str:
    cin, cout, kernel, _, _, groups, shape, dtype, channels_last, device, autocast = key
    layout = "channels_last" if channels_last else "contiguous"
    cast = f", autocast {autocast}" if autocast is not None else ""
    return (
        f"{cin}->{cout} {kernel[0]}x{kernel[1]} groups={groups} at {tuple(shape)} "
        f"{dtype} {layout} on {device}{cast}"
    )


@torch.inference_mode(False)  # an evaluation's first call may come in inference mode
def _time_form(form: str, conv: nn.Conv2d, x: Tensor) -> float:
    """Median milliseconds of one forward + backward of ``form`` on a random input like ``x``,
    with detached copies of the parameters (the model's gradients stay untouched)."""
    fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
    generator = torch.Generator(x.device).manual_seed(0)  # not the caller's random stream
    probe = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    probe = probe.contiguous(memory_format=fmt).requires_grad_()
    weight = conv.weight.detach().requires_grad_()
    bias = conv.bias.detach().requires_grad_() if conv.bias is not None else None
    with torch.enable_grad():
        shape = run_form(form, conv, probe, weight, bias).shape
        grad = torch.randn(shape, generator=generator, dtype=probe.dtype, device=probe.device)
        grad = grad.contiguous(memory_format=fmt)
        step = lambda: run_form(form, conv, probe, weight, bias).backward(grad)  # noqa: E731
        return statistics.median(_timed(step, x.device)[WARMUP:])


def _timed(step: Callable[[], None], device: torch.device) -> list[float]:
    times = []
    for _ in range(WARMUP + REPEATS):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
