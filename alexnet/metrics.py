"""Top-k error by counting: correct predictions and images are summed, never averaged.

Under DDP every rank counts its own shard and ``Accumulator.all_reduce`` sums the counts, so
the rates are exact ratios over the whole set (a mean of per-rank or per-batch rates is wrong
whenever shards or batches differ in size). ``check_count`` then asserts that exactly the
expected number of images was seen (no sampler padding or dropping).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class CountMismatchError(RuntimeError):
    """The evaluation saw a different number of images from the split's size."""


def topk_correct(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> torch.Tensor:
    """Count the samples whose target is among the k highest scores, for each k.

    Args:
        scores: (N, C) logits or probabilities (any monotone score gives the same counts).
        targets: (N,) class indices.
        ks: the k values, each >= 1. A k of C or more counts every valid target (top-5 of a
            3-class problem is 100 %).

    Returns:
        int64 tensor (len(ks),) on ``scores``' device.

    Ties: the k highest scores are those ``torch.topk`` returns; when several classes tie at
    the k-th place, which of them is in the top k is up to torch.topk (unspecified). Real
    network outputs almost never tie exactly.
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores (N, C) and targets (N,), got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k'), best first
    hits = top == targets.to(top.device).view(-1, 1)  # at most one True per row
    return torch.stack([hits[:, :k].any(dim=1).sum() for k in ks]).to(torch.int64)


def average_views(logits: torch.Tensor) -> torch.Tensor:
    """Average the softmax of each view (§4.1: the ten patches' softmax outputs are averaged).

    Args:
        logits: (N, V, C), V views per image.

    Returns:
        (N, C) probabilities: ``softmax(logits, -1).mean(1)``, computed in at least float32.
    """
    if logits.dim() != 3:
        raise ValueError(f"expected logits (N, views, C), got {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.softmax(logits.to(dtype), dim=-1).mean(dim=1)


class Accumulator:
    """Running sums for top-k error: correct counts per k, image count, loss sum.

    Counts stay on the device of the scores (no host sync per batch) until ``rates()``.

    Example:
        acc = Accumulator()
        for images, labels in loader:
            acc.update(model(images), labels, loss)
        acc.all_reduce()  # under DDP: sum over ranks
        check_count(acc.n, len(dataset))
        print(acc.rates()["top1_err"])
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(ks)
        self.n = 0
        self.correct: torch.Tensor = torch.zeros(len(self.ks), dtype=torch.int64)
        self.loss_sum: torch.Tensor = torch.zeros((), dtype=torch.float64)
        self.has_loss = False
        self._reduced = False

    def update(
        self, scores: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor | float | None = None
    ) -> None:
        """Add one batch. ``loss`` is the batch's *mean* loss; it is weighted by the batch size."""
        if self._reduced:
            raise RuntimeError("Accumulator.update after all_reduce: make a new Accumulator")
        count = topk_correct(scores, targets, self.ks)
        self.correct = self.correct.to(count.device) + count
        batch = scores.shape[0]
        self.n += batch
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                value = loss.detach().to(torch.float64)
            else:
                value = torch.tensor(float(loss), dtype=torch.float64)
            self.loss_sum = self.loss_sum.to(value.device) + value * batch
            self.has_loss = True

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> Accumulator:
        """Sum the counts over all ranks when torch.distributed is initialised; returns self.

        Every rank must call it (also ranks that saw no images). Calling it twice would count
        twice, so the second call raises.
        """
        if self._reduced:
            raise RuntimeError("Accumulator.all_reduce called twice")
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cpu")
            if dist.get_backend(group) == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            # float64 holds counts exactly up to 2**53.
            header = [float(self.n), float(self.has_loss)]
            packed = torch.cat(
                [
                    self.correct.to(device, torch.float64),
                    torch.tensor(header, dtype=torch.float64, device=device),
                    self.loss_sum.to(device).view(1),
                ]
            )
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
            k = len(self.ks)
            self.correct = packed[:k].round().to(torch.int64).cpu()
            self.n = int(packed[k].item())
            self.has_loss = bool(packed[k + 1].item() > 0)
            self.loss_sum = packed[k + 2].cpu()
        self._reduced = True
        return self

    def rates(self) -> dict[str, float]:
        """``top{k}_err`` and ``top{k}_acc`` (fractions) for each k, ``n``, and ``loss`` if given.

        Raises:
            ValueError: no image was counted.
        """
        if self.n == 0:
            raise ValueError("no images were counted; the evaluation set is empty")
        out: dict[str, float] = {}
        for k, c in zip(self.ks, self.correct.tolist(), strict=True):
            out[f"top{k}_acc"] = c / self.n
            out[f"top{k}_err"] = (self.n - c) / self.n
        out["n"] = self.n
        if self.has_loss:
            out["loss"] = float(self.loss_sum) / self.n
        return out


def check_count(n: int, expected: int) -> None:
    """Raise ``CountMismatchError`` unless exactly ``expected`` images were evaluated."""
    if n != expected:
        how = f"{expected - n} missing" if n < expected else f"{n - expected} counted twice"
        raise CountMismatchError(
            f"evaluated {n} images but the split has {expected} ({how}); a sampler that pads "
            "or drops images across ranks, or drop_last=True, would explain it"
        )
