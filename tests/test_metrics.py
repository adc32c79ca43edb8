"""Top-k counts, softmax averaging over views, and sum-based aggregation (also over 2 ranks)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet.metrics import (
    Accumulator,
    CountMismatchError,
    average_views,
    check_count,
    topk_correct,
)

# 4 images, 6 classes. Ranks of the target (1 = highest score):
#   row 0: target 2, scores 0.9 at class 2             -> rank 1 (top-1 and top-5)
#   row 1: target 0, class 0 is 3rd highest            -> rank 3 (top-5 only)
#   row 2: target 5, class 5 is the lowest             -> rank 6 (neither)
#   row 3: target 4, class 4 is 5th highest            -> rank 5 (top-5 only)
SCORES = torch.tensor(
    [
        [0.0, 0.1, 0.9, 0.2, -1.0, 0.3],
        [2.0, 3.0, 1.0, 5.0, -2.0, 0.5],
        [1.0, 2.0, 3.0, 4.0, 5.0, -6.0],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
    ]
)
TARGETS = torch.tensor([2, 0, 5, 4])
# By hand: top-1: row 0 only = 1; top-2: row 0 = 1; top-3: rows 0, 1 = 2; top-5: rows 0, 1, 3 = 3.


def test_topk_hand_counts() -> None:
    counts = topk_correct(SCORES, TARGETS, ks=(1, 2, 3, 5, 6))
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 1, 2, 3, 4]
    assert topk_correct(SCORES, TARGETS).tolist() == [1, 3]  # default ks = (1, 5)
    # Probabilities rank the classes as the logits do.
    assert topk_correct(SCORES.softmax(1), TARGETS).tolist() == [1, 3]
    assert topk_correct(SCORES[:0], TARGETS[:0]).tolist() == [0, 0]
    # k beyond the class count: the target is always among all classes.
    # Top classes of the first 3 columns: 2, 1, 2, 0; so targets (2, 1, 0, 0) give 3 at top-1.
    assert topk_correct(SCORES[:, :3], torch.tensor([2, 1, 0, 0]), ks=(1, 5)).tolist() == [3, 4]


def test_topk_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        topk_correct(SCORES, TARGETS, ks=(0, 5))
    with pytest.raises(ValueError, match="targets"):
        topk_correct(SCORES, TARGETS[:3])


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_average_views_is_mean_of_softmaxes() -> None:
    logits = torch.tensor(
        [
            [[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]],
            [[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    expected = [
        [(a + b) / 2 for a, b in zip(_softmax(image[0]), _softmax(image[1]), strict=True)]
        for image in logits.tolist()
    ]
    probs = average_views(logits)
    assert probs.shape == (2, 3)
    reference = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(probs, reference, rtol=1e-12, atol=0)
    # Not the softmax of the mean logits (§4.1 averages the softmax outputs).
    assert not torch.allclose(probs, logits.mean(1).softmax(-1), atol=1e-3)
    assert average_views(logits.to(torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="views"):
        average_views(logits[0])


def test_accumulator_sums_counts_and_weights_loss_by_batch() -> None:
    torch.manual_seed(0)
    scores, targets = torch.randn(11, 8), torch.randint(0, 8, (11,))
    acc = Accumulator()
    batches = [(0, 7), (7, 11)]  # unequal batches: 7 and 4 images
    for a, b in batches:
        acc.update(scores[a:b], targets[a:b], F.cross_entropy(scores[a:b], targets[a:b]))
    top1, top5 = topk_correct(scores, targets).tolist()
    rates = acc.rates()
    assert rates["n"] == 11
    assert rates["top1_acc"] == top1 / 11 and rates["top1_err"] == (11 - top1) / 11
    assert rates["top5_acc"] == top5 / 11 and rates["top5_err"] == (11 - top5) / 11
    loss_sum = F.cross_entropy(scores, targets, reduction="sum").item()
    assert rates["loss"] == pytest.approx(loss_sum / 11)
    assert acc.all_reduce() is acc  # not distributed: a no-op
    assert acc.rates() == rates
    with pytest.raises(RuntimeError, match="twice"):
        acc.all_reduce()
    with pytest.raises(RuntimeError, match="after all_reduce"):
        acc.update(scores, targets)
    assert "loss" not in _counted(scores, targets).rates()
    float_loss = Accumulator()
    float_loss.update(scores[:3], targets[:3], 0.1)  # a Python float keeps float64 precision
    assert float_loss.rates()["loss"] == 0.1 * 3 / 3
    with pytest.raises(ValueError, match="no images"):
        Accumulator().rates()


def _counted(scores: torch.Tensor, targets: torch.Tensor) -> Accumulator:
    acc = Accumulator()
    acc.update(scores, targets)
    return acc


def test_check_count() -> None:
    check_count(50_000, 50_000)
    missing = r"evaluated 49999 images but the split has 50000 \(1 missing\)"
    with pytest.raises(CountMismatchError, match=missing):
        check_count(49_999, 50_000)
    with pytest.raises(CountMismatchError, match="2 counted twice"):
        check_count(50_002, 50_000)


# --- two ranks with gloo ------------------------------------------------------------------------


def _shard(rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank 0: 6 images, all right at top-1. Rank 1: 2 images, target 2nd. Loss per image = rank."""
    n = 6 if rank == 0 else 2
    targets = torch.arange(n) % 4
    predicted = targets if rank == 0 else (targets + 1) % 4
    scores = 10 * F.one_hot(predicted, 4) + 5 * F.one_hot(targets, 4)  # no tie touches a target
    return scores.float(), targets, float(rank)


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        scores, targets, loss = _shard(rank)
        acc = Accumulator(ks=(1, 2))
        acc.update(scores, targets, loss)
        torch.save(acc.all_reduce().rates(), Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0 == rank1
    # Exact global ratios: 6 right of 8 (not the mean of per-rank rates, (1 + 0) / 2).
    assert rank0["n"] == 8
    assert rank0["top1_acc"] == 6 / 8 and rank0["top1_err"] == 2 / 8
    assert rank0["top2_acc"] == 1.0
    assert rank0["loss"] == (6 * 0.0 + 2 * 1.0) / 8
    single = Accumulator(ks=(1, 2))
    for rank in (0, 1):
        scores, targets, loss = _shard(rank)
        single.update(scores, targets, loss)
    assert single.rates() == rank0
