"""The paper's LRN (§3.3) against its formula, computed independently in float64."""

from __future__ import annotations

import pytest
import torch

from alexnet.model import PaperLRN


def lrn_reference(
    a: torch.Tensor, n: int, alpha: float, beta: float, k: float, semantics: str, groups: int
) -> torch.Tensor:
    a = a.double()
    out = torch.empty_like(a)
    per = a.shape[1] // groups
    scale = alpha if semantics == "raw_sum" else alpha / n
    for g in range(groups):
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            s = sum(a[:, g * per + j] ** 2 for j in range(lo, hi + 1))
            out[:, g * per + i] = a[:, g * per + i] / (k + scale * s) ** beta
    return out


@pytest.mark.parametrize("semantics", ["raw_sum", "divided_by_n"])
@pytest.mark.parametrize("k", [2.0, 1.0])
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_matches_the_formula(semantics: str, k: float, groups: int) -> None:
    a = torch.rand(2, 96, 4, 5) * 300.0  # alpha * sum of squares is O(1): the norm matters
    lrn = PaperLRN(5, 1e-4, 0.75, k, semantics, groups)
    expected = lrn_reference(a, 5, 1e-4, 0.75, k, semantics, groups)
    torch.testing.assert_close(lrn(a).double(), expected, rtol=2e-6, atol=0.0)
    assert (expected - a.double()).abs().max() > 1.0  # not close to the identity


def test_lrn_tower_boundary() -> None:
    a = torch.rand(1, 96, 3, 3) * 300.0
    b = a.clone()
    b[:, 48] += 100.0  # first map of tower B
    per_tower = PaperLRN(5, 1e-4, 0.75, 2.0, groups=2)
    across = PaperLRN(5, 1e-4, 0.75, 2.0, groups=1)
    assert torch.equal(per_tower(a)[:, :48], per_tower(b)[:, :48])
    assert not torch.equal(per_tower(a)[:, 49:51], per_tower(b)[:, 49:51])
    assert not torch.equal(across(a)[:, 46:48], across(b)[:, 46:48])  # 46, 47 see 48 when ungrouped
    assert torch.equal(across(a)[:, :46], across(b)[:, :46])
