"""One training epoch and one pass of evaluation or prediction: explicit inputs, results out.

``train_one_epoch`` runs the steps an ``EpochSpan`` names (a whole epoch, or its rest after a
resume) and returns an ``EpochResult``; ``evaluate`` counts top-1/top-5 errors exactly (sums,
never means of means, over DDP ranks too); ``predict`` returns every image's probabilities.
The training loop around them is ``loop.py``; benchmarks call them directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from alexnet.data.loaders import Batch
from alexnet.data.records import CorruptRecord
from alexnet.metrics import Accumulator, average_views, check_count
from alexnet.runtime import Runtime
from alexnet.training import agree


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the global step where it first happened,
    ``lr`` the weights' learning rate then (None: not known)."""

    def __init__(self, step: int, value: float, lr: float | None = None) -> None:
        at = f" (lr {lr:g})" if lr is not None else ""
        super().__init__(f"loss became {value} at step {step}{at}")
        self.step, self.lr = step, lr


class NonFiniteWeights(NonFiniteLoss):
    """Weights about to be saved hold NaN or infinity (an update blew up while its loss was
    still finite); the message names the first layers."""

    def __init__(self, step: int, layers: list[str], lr: float | None = None) -> None:
        RuntimeError.__init__(
            self,
            f"weights became non-finite ({', '.join(layers[:3])}) by step {step}"
            + (f" (lr {lr:g})" if lr is not None else ""),
        )
        self.step, self.lr = step, lr


@dataclass(frozen=True)
class EpochSpan:
    """Which steps of which epoch to run, and how often to report and checkpoint."""

    epoch: int
    start_step: int  # first step of this epoch to run (> 0 when resuming mid-epoch)
    steps: int  # steps in the whole epoch
    first_global_step: int  # global step number of ``start_step``
    log_every: int
    checkpoint_every: int  # 0 = never mid-epoch

    def global_step(self, done: int) -> int:
        """The global step count once ``done`` steps of the epoch are complete."""
        return self.first_global_step + done - self.start_step


@dataclass(frozen=True)
class EpochResult:
    """What ``train_one_epoch`` did: its means over the steps it ran, and how far it got."""

    loss: float  # mean training loss over the steps run
    top1_err: float  # training error over this run's images (NaN if none)
    top5_err: float
    steps_done: int  # steps of the epoch complete (start_step + steps run)
    images: int  # images this process trained on
    seconds: float


@dataclass
class Hooks:
    """What the epoch calls back into. Each may be left as the default no-op."""

    log: Callable[[int, dict[str, float]], None] = lambda step, values: None
    checkpoint: Callable[[int], None] = lambda step_in_epoch: None  # called with steps completed
    should_stop: Callable[[], bool] = lambda: False  # e.g. a signal arrived


def train_one_epoch(
    module: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    rt: Runtime,
    span: EpochSpan,
    hooks: Hooks,
    show_progress: bool = True,
) -> EpochResult:
    """Run ``span``'s steps; returns loss/error means over them and how far it got.

    Losses stay on the device between reports; every ``log_every`` steps (and before every
    checkpoint) they are checked at once, so a non-finite loss is found before it is saved.

    Raises:
        NonFiniteLoss: with the global step at which the loss first stopped being finite.
        CorruptRecord: a batch lost a record (``data.on_corrupt: stop``; under DDP on any rank,
            raised on all); ``steps_done`` holds the epoch's steps completed before it.
    """
    module.train()
    totals = Accumulator()
    bar = _epoch_bar(span, show_progress and rt.is_main)
    report = _Report(span, hooks, bar, optimizer.param_groups[0]["lr"], span.start_step)
    try:
        for images, labels in _agreed(batches, rt):
            with rt.autocast():
                logits = module(rt.batch(images))
                loss = F.cross_entropy(logits.float(), labels.to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals.update(logits.detach(), labels.to(logits.device))
            done = report.add(loss, len(labels))
            if done % span.log_every == 0:
                report.flush()
            if span.checkpoint_every and done % span.checkpoint_every == 0 and done < span.steps:
                report.flush()
                hooks.checkpoint(done)
            if done >= span.steps or hooks.should_stop():
                break
    except CorruptRecord as err:
        report.flush()  # a non-finite loss among the steps done is the first problem
        bar.close()
        err.steps_done = report.done
        raise
    report.flush()
    bar.close()
    totals.all_reduce()  # training error over all ranks' images (a sum, never a mean of means)
    rates = totals.rates() if totals.n else {"top1_err": math.nan, "top5_err": math.nan}
    ran = report.done - span.start_step
    return EpochResult(
        loss=report.loss_sum / ran if ran else math.nan,  # none ran: resumed at the epoch's end
        top1_err=rates["top1_err"],
        top5_err=rates["top5_err"],
        steps_done=report.done,
        images=report.seen,
        seconds=time.perf_counter() - report.started,
    )


def _epoch_bar(span: EpochSpan, enabled: bool) -> tqdm:
    return tqdm(
        total=span.steps,
        initial=span.start_step,
        desc=f"epoch {span.epoch}",
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


@dataclass
class _Report:
    """The epoch's running count; step losses wait on the device until ``flush`` checks them."""

    span: EpochSpan
    hooks: Hooks
    bar: tqdm
    lr: float
    done: int  # steps of the epoch completed
    seen: int = 0  # images this process trained on
    loss_sum: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    window: list[torch.Tensor] = field(default_factory=list)

    def add(self, loss: torch.Tensor, images: int) -> int:
        self.window.append(loss.detach())
        self.seen += images
        self.done += 1
        self.bar.update(1)
        return self.done

    def flush(self) -> None:
        """Check the waiting losses, log their mean and the throughput, update the bar."""
        if not self.window:
            return
        losses = torch.stack(self.window).float().cpu()
        step = self.span.global_step(self.done)
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise NonFiniteLoss(step - len(self.window) + i, float(losses[i]), self.lr)
        self.loss_sum += float(losses.sum())
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        self.hooks.log(step, {"loss": float(losses.mean()), "lr": self.lr, "images_per_s": rate})
        self.bar.set_postfix(
            loss=f"{float(losses[-1]):.3f}", lr=f"{self.lr:.2g}", img_s=f"{rate:.0f}"
        )
        self.window.clear()


def _agreed(batches: Iterable[Batch], rt: Runtime) -> Iterator[Batch]:
    """``batches``; under DDP each is released once every rank has its own, so a corrupt record
    in one rank's batch stops every rank before the same step (one host all-reduce a step)."""
    source = iter(batches)
    while True:
        err: CorruptRecord | None = None
        try:
            item = next(source)
        except StopIteration:
            return  # every rank runs as many steps
        except CorruptRecord as found:
            err = found
        if rt.distributed and agree.any_rank(rt, err is not None):
            message = agree.first_message(rt, None if err is None else str(err))
            err = err or CorruptRecord(f"{message} (found by another process)")
        if err is not None:
            raise err
        yield item


@torch.inference_mode()
def evaluate(
    module: nn.Module,
    batches: Iterable[Batch],
    rt: Runtime,
    expected: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Top-1/top-5 error over ``batches`` of (views (n, V, 3, S, S), labels).

    With V > 1 the softmax outputs of the views are averaged (paper §4.1). Counts are summed
    over DDP ranks; ``expected`` asserts that every image was scored exactly once or reported
    unscored. Runs under ``torch.inference_mode`` and in ``runtime.eval_dtype``.

    An ``EvalLoader`` names the images it could not read (``unscored``, corrupt records): they
    are counted in the result's ``unscored`` (the rates are over the images scored), or, with
    ``data.on_corrupt: stop``, end the evaluation with ``CorruptRecord`` on every rank.
    """
    module.eval()
    totals = Accumulator()
    for views, labels in _progress(batches, show_progress and rt.is_main, "eval"):
        n, v = views.shape[:2]
        with rt.autocast(evaluation=True):
            logits = module(rt.batch(views.flatten(0, 1))).float()
        labels = labels.to(logits.device)
        logits = logits.view(n, v, -1)
        probs = average_views(logits)
        totals.update(probs, labels, F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    totals.all_reduce()
    unscored = unscored_images(batches, rt)
    if expected is not None:
        check_count(totals.n + unscored, expected)
    return {**totals.rates(), "unscored": unscored}


def unscored_images(batches: Iterable[Batch], rt: Runtime) -> int:
    """How many images the loader's last pass left out, over all ranks; raises
    ``CorruptRecord`` (every rank) if there are any and ``data.on_corrupt`` is stop."""
    left_out = list(getattr(batches, "unscored", []))
    count = agree.total(rt, len(left_out))
    if count and not getattr(batches, "skip", False):
        first = agree.first_message(rt, left_out[0].describe() if left_out else None)
        raise CorruptRecord(f"{first}; {count} image(s) could not be scored (data.on_corrupt=stop)")
    return count


@torch.no_grad()
def predict(
    module: nn.Module, batches: Iterable[Batch], rt: Runtime, show_progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of every image of ``batches`` (views softmax-averaged, §4.1).

    ``batches`` yield (views (n, V, 3, S, S), labels) like ``evaluate``'s. Returns float32
    probabilities (N, C) and int64 labels (N,) on the CPU, in the loader's order (this process's
    shard only under DDP). Runs in ``runtime.eval_dtype``, as ``evaluate`` does.
    """
    module.eval()
    probs, labels = [], []
    for views, y in _progress(batches, show_progress and rt.is_main, "predict"):
        n, v = views.shape[:2]
        with rt.autocast(evaluation=True):
            logits = module(rt.batch(views.flatten(0, 1))).float()
        probs.append(average_views(logits.view(n, v, -1)).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def _progress(items: Iterable[Batch], enabled: bool, desc: str) -> Iterator[Batch]:
    total = len(items) if hasattr(items, "__len__") else None
    yield from tqdm(items, total=total, desc=desc, unit="batch", disable=not enabled, leave=False)
